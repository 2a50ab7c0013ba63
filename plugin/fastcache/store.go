package fastcache

import (
	"sync"
	"sync/atomic"
	"time"
)

// entry is one stored answer: immutable once in the store.
type entry struct {
	resp []byte
	l    layout
	// stored is when the answer carried l.ttl, and until is when the fast
	// path stops serving it, both on the store's clock.
	stored, until int64
}

// ttlAt is the TTL the entry's records carry at now, never above what
// CoreDNS's cache would give: the stored TTL minus the whole seconds since,
// rounded up.
func (e *entry) ttlAt(now int64) uint32 {
	age := (now - e.stored + int64(time.Second) - 1) / int64(time.Second)
	if age >= int64(e.l.ttl) {
		return 0
	}
	return e.l.ttl - uint32(age)
}

const shards = 64

// store holds answers by key, in shards, up to a capacity; when full, an
// arbitrary entry of the shard makes room, as CoreDNS's cache does.
type store struct {
	shard    [shards]shard
	perShard int
	size     atomic.Int64
	epoch    time.Time
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*entry
}

func newStore(capacity int) *store {
	s := &store{perShard: max(1, (capacity+shards-1)/shards), epoch: time.Now()}
	for i := range s.shard {
		s.shard[i].m = make(map[string]*entry)
	}
	return s
}

// now is the store's monotonic clock, in nanoseconds.
func (s *store) now() int64 { return int64(time.Since(s.epoch)) }

func shardOf(key []byte) int {
	h := uint32(2166136261)
	for _, c := range key {
		h ^= uint32(c)
		h *= 16777619
	}
	return int(h % shards)
}

// get returns the entry for key if the fast path may still serve it at now.
func (s *store) get(key []byte, now int64) *entry {
	sh := &s.shard[shardOf(key)]
	sh.mu.RLock()
	e := sh.m[string(key)]
	sh.mu.RUnlock()
	if e == nil || now >= e.until {
		return nil
	}
	return e
}

func (s *store) put(key []byte, e *entry) {
	sh := &s.shard[shardOf(key)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[string(key)]; !ok {
		if len(sh.m) >= s.perShard {
			for k := range sh.m {
				delete(sh.m, k)
				s.size.Add(-1)
				break
			}
		}
		s.size.Add(1)
	}
	sh.m[string(key)] = e
}

// len is the number of stored answers, expired ones included until they
// are replaced or evicted.
func (s *store) len() int { return int(s.size.Load()) }
