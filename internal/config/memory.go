package config

// The memory arithmetic of the built-in Corefile: what the agent may hold
// at worst, as parts of the container's memory limit L, so that a full cache
// and a flood of misses stay well below it (docs/configuration.md,
// "Memory"). Go's soft limit is 0.85 L (set by the agent); the rest of L is
// for stacks, the runtime and the kernel's socket buffers.
//
//	caches            0.40 L  builtInCaches caches of SizedCapacity entries,
//	                          each at most EntryCost (measured by
//	                          internal/server.TestEntryCost)
//	large answers     0.85 L / 8 (≈ 0.11 L): what CoreDNS's cache holds
//	                          besides the fast path's store (answers above
//	                          the UDP cap, SERVFAILs, delegations, queries
//	                          the fast path does not parse), counted at
//	                          their size (plugin/fastcache)
//	misses in flight  0.15 L  builtInForwards × max_concurrent, each at most
//	                          inflightCost
//	TCP connections   0.85 L / 8 (≈ 0.11 L): the fast path's listener caps
//	                          them at 80 KiB each (plugin/fastcache)
//	the rest          0.23 L  the process itself (about 20 MiB idle), packets
//	                          being answered
const (
	cacheShare = 0.40
	// EntryCost bounds what one cached name costs: the fast path's entry
	// (plugin/fastcache's store, the only place the built-in Corefile's
	// caches keep an answer the fast path serves), its wire answer of up to
	// 1,220 bytes with its key, header and table slot: 1,338 bytes
	// measured for a 1,136-byte answer, and room for the longest names.
	// What CoreDNS's cache holds besides counts against the large answers'
	// budget.
	EntryCost = 1792
	// builtInCaches: the built-in Corefile has two server blocks with a
	// fastcache each, each with a success and a denial cache.
	builtInCaches = 4
	inflightShare = 0.15
	// inflightCost bounds one miss waiting for kube-dns: its goroutines,
	// the query and the answer as messages, the connection's share.
	inflightCost = 20 << 10
	// builtInForwards: one forward per server block.
	builtInForwards = 2
	// cacheShards: CoreDNS's cache splits a capacity over 256 shards.
	cacheShards = 256
	// maxSizedCapacity and maxSizedConcurrent bound what a large limit
	// gives.
	maxSizedCapacity   = 1 << 20
	maxSizedConcurrent = 10000
)

// SizedCapacity is the capacity of each cache of the built-in Corefile for
// a container memory limit of limit bytes: a multiple of CoreDNS's shard
// count, at least one entry per shard; DefaultCacheCapacity when the limit
// is unknown (0).
func SizedCapacity(limit int64) int {
	if limit <= 0 {
		return DefaultCacheCapacity
	}
	n := int64(float64(limit)*cacheShare) / (builtInCaches * EntryCost)
	n = n / cacheShards * cacheShards
	return int(min(max(n, cacheShards), maxSizedCapacity))
}

// SizedConcurrent is max_concurrent of each forward of the built-in
// Corefile for a container memory limit of limit bytes (at least 100);
// DefaultMaxConcurrent when the limit is unknown (0).
func SizedConcurrent(limit int64) int {
	if limit <= 0 {
		return DefaultMaxConcurrent
	}
	n := int64(float64(limit)*inflightShare) / (builtInForwards * inflightCost)
	n = n / 100 * 100
	return int(min(max(n, 100), maxSizedConcurrent))
}

// Sized fills what c leaves to the memory limit (cache capacities of 0) and
// sizes MaxConcurrent for the container's memory limit of limit bytes (0:
// unknown).
func (c Config) Sized(limit int64) Config {
	if c.SuccessCapacity == 0 {
		c.SuccessCapacity = SizedCapacity(limit)
	}
	if c.DenialCapacity == 0 {
		c.DenialCapacity = SizedCapacity(limit)
	}
	c.MaxConcurrent = SizedConcurrent(limit)
	return c
}
