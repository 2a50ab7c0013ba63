package fastcache

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// entry is one stored answer, immutable once in the store but for two
// atomic fields (refresh, used). It is the header of one allocation that
// holds, after it, the key, the answer and the offsets of the answer's
// TTLs (big-endian uint16s): after the table's slot, a hit reads one place
// in memory, where four separate objects (the entry, the key, the answer,
// the offsets) would each cost a cache miss and a TLB miss at moderate
// rates, when the kernel's work between queries has evicted them. The
// header holds no pointers, so the allocation is a byte slice the garbage
// collector does not scan; the *entry, pointing at its start, keeps it
// alive.
type entry struct {
	// stored is when the answer carried ttl, and until is when the fast
	// path stops serving it, both on the store's clock.
	stored, until int64
	// refresh is the state of serve_stale's refresh of an expired entry:
	// 0 none, -1 one running, else the time (on the store's clock) before
	// which a failed one is not retried. Changed atomically, as used is;
	// the rest of the entry is immutable.
	refresh int64
	// ttl is the TTL every record carried when the answer was stored.
	ttl uint32
	// used is set (atomically) when the entry is served, and cleared when
	// a full shard looking for a victim passes over it: an entry served
	// since is not evicted while one that was not is at hand.
	used            uint32
	keyLen, respLen uint16
	// nameLen is the wire length of the question name; opt the offset of
	// the OPT record's class, or 0; nttls the number of TTL offsets.
	nameLen, opt, nttls uint16
	// denial is set for an entry of a denial store.
	denial bool
}

const entrySize = int(unsafe.Sizeof(entry{}))

// newEntry returns the entry for answer resp, with layout l, to the query
// with key key; nil when a length does not fit the header (never for an
// answer the fast path stores, at most maxFastAnswer bytes).
func newEntry(key, resp []byte, l layout, stored, until int64) *entry {
	if len(key) > math.MaxUint16 || len(resp) > math.MaxUint16 || len(l.ttls) > math.MaxUint16 ||
		l.nameLen > math.MaxUint16 || l.opt > math.MaxUint16 {
		return nil
	}
	// Go allocates 8-byte aligned blocks for all but the smallest sizes,
	// and the header is larger than those.
	buf := make([]byte, entrySize+len(key)+len(resp)+2*len(l.ttls))
	e := (*entry)(unsafe.Pointer(unsafe.SliceData(buf)))
	*e = entry{stored: stored, until: until, ttl: l.ttl, keyLen: uint16(len(key)), respLen: uint16(len(resp)),
		nameLen: uint16(l.nameLen), opt: uint16(l.opt), nttls: uint16(len(l.ttls))}
	data := buf[entrySize:]
	copy(data, key)
	copy(data[len(key):], resp)
	offs := data[len(key)+len(resp):]
	for i, o := range l.ttls {
		binary.BigEndian.PutUint16(offs[2*i:], o)
	}
	return e
}

// data is the allocation after the header.
func (e *entry) data() []byte {
	n := int(e.keyLen) + int(e.respLen) + 2*int(e.nttls)
	if n == 0 {
		return nil // a pointer past the header would point past the allocation
	}
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(e), entrySize)), n)
}

func (e *entry) key() []byte { return e.data()[:e.keyLen] }

func (e *entry) resp() []byte {
	return e.data()[e.keyLen : int(e.keyLen)+int(e.respLen)]
}

// ttlOffsets are the offsets of the TTLs in resp, as big-endian uint16s.
func (e *entry) ttlOffsets() []byte { return e.data()[int(e.keyLen)+int(e.respLen):] }

// ttlAt is the TTL the entry's records carry at now, never above what
// CoreDNS's cache would give: the stored TTL minus the whole seconds since,
// rounded up.
func (e *entry) ttlAt(now int64) uint32 {
	age := (now - e.stored + int64(time.Second) - 1) / int64(time.Second)
	if age >= int64(e.ttl) {
		return 0
	}
	return e.ttl - uint32(age)
}

const shards = 64

// store holds answers by key, in shards, up to a capacity; when full, an
// expired entry of the shard makes room, else an arbitrary one, as in
// CoreDNS's cache.
//
// Each shard is an open-addressing table of (hash of the key, entry) pairs
// with linear probing, at most half full: a hit reads one slot, then the
// entry, which holds its key and answer. (A Go map
// reads its header, directory, table and group first: each a cache miss
// at moderate rates, when the kernel's work between queries has evicted
// them.) The slot's hash is checked against the entry's key.
type store struct {
	shard    [shards]shard
	perShard int
	size     atomic.Int64
	epoch    time.Time
	seed     maphash.Seed
}

type shard struct {
	mu    sync.RWMutex
	slots []slot // a power of two long
	n     int
}

// slot is a table slot; h is 0 when it is empty (hashes are odd).
type slot struct {
	h uint64
	e *entry
}

// minSlots is a shard's table size at start; it doubles as entries come.
const minSlots = 16

func newStore(capacity int) *store {
	s := &store{perShard: max(1, (capacity+shards-1)/shards), epoch: time.Now(), seed: maphash.MakeSeed()}
	for i := range s.shard {
		s.shard[i].slots = make([]slot, minSlots)
	}
	return s
}

// sibling returns an empty store of the given capacity on s's clock and
// with s's hash seed, so that one hash finds a key in either.
func (s *store) sibling(capacity int) *store {
	t := newStore(capacity)
	t.epoch, t.seed = s.epoch, s.seed
	return t
}

// now is the store's monotonic clock, in nanoseconds.
func (s *store) now() int64 { return int64(time.Since(s.epoch)) }

// hash is key's hash, odd: the top bits pick the shard, the low bits the
// slot.
func (s *store) hash(key []byte) uint64 { return maphash.Bytes(s.seed, key) | 1 }

func (s *store) shardOf(h uint64) *shard { return &s.shard[h>>(64-6)] }

// get returns the entry for key if the fast path may still serve it at now.
func (s *store) get(key []byte, now int64) *entry { return s.getHashed(s.hash(key), key, now, 0) }

// getHashed returns the entry for key, of hash h, if it is fresh at now or
// expired less than grace ago.
func (s *store) getHashed(h uint64, key []byte, now, grace int64) *entry {
	sh := s.shardOf(h)
	sh.mu.RLock()
	var e *entry
	if i, ok := sh.find(h); ok {
		e = sh.slots[i].e
	}
	sh.mu.RUnlock()
	if e == nil || now >= e.until+grace || string(e.key()) != string(key) {
		return nil
	}
	if atomic.LoadUint32(&e.used) == 0 { // a popular entry's line stays clean
		atomic.StoreUint32(&e.used, 1)
	}
	return e
}

// put stores e under its key, in the place of any entry with the same key
// (or, against odds of 2^-63, the same hash).
func (s *store) put(e *entry) {
	h := s.hash(e.key())
	sh := s.shardOf(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if i, ok := sh.find(h); ok {
		sh.slots[i].e = e
		return
	}
	if sh.n >= s.perShard {
		sh.remove(sh.victim(h, e.stored))
		s.size.Add(-1)
	}
	if 2*(sh.n+1) > len(sh.slots) {
		sh.grow()
	}
	i, _ := sh.find(h)
	sh.slots[i] = slot{h: h, e: e}
	sh.n++
	s.size.Add(1)
}

// delete removes the entry for key, if any.
func (s *store) delete(key []byte) {
	h := s.hash(key)
	sh := s.shardOf(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if i, ok := sh.find(h); ok && string(sh.slots[i].e.key()) == string(key) {
		sh.remove(i)
		s.size.Add(-1)
	}
}

// beginRefresh reports whether a refresh of the expired entry may start at
// now, and marks one running: not while one runs, nor, with recheck, until
// recheck after one that failed (CoreDNS's item.beginRefresh).
func (e *entry) beginRefresh(now int64) bool {
	v := atomic.LoadInt64(&e.refresh)
	if v < 0 || v > 0 && now < v {
		return false
	}
	return atomic.CompareAndSwapInt64(&e.refresh, v, -1)
}

// endRefresh ends the refresh begun; one that failed is not retried for
// recheck.
func (e *entry) endRefresh(now int64, recheck time.Duration, refreshed bool) {
	var v int64
	if recheck > 0 && !refreshed {
		v = now + int64(recheck)
	}
	atomic.StoreInt64(&e.refresh, v)
}

// evictProbes is how many entries a full shard looks at for one the fast
// path no longer serves before it evicts an arbitrary one.
const evictProbes = 8

// victim is the slot of the entry to evict from the full shard for an entry
// of hash h stored at now, by a second-chance (clock) rule over the first
// evictProbes entries from a slot picked by hash bits the index does not
// use (an arbitrary place): the first the fast path no longer serves
// (expired: kept only for serve_stale, and where the store is not the
// cache of what it holds, CoreDNS's cache has its own), else the first not
// served since a victim was last looked for among them, else the first.
// The entries passed over lose their mark. So a flood of names asked once
// evicts its own kind, not the names the node's pods keep asking. (Not the
// one that expires first: that is the one stored first, often a popular
// name a flood of new ones would then push out.)
func (sh *shard) victim(h uint64, now int64) uint64 {
	mask := uint64(len(sh.slots) - 1)
	first, unused, probed := uint64(math.MaxUint64), uint64(math.MaxUint64), 0
	for i := (h >> 32) & mask; probed < min(evictProbes, sh.n); i = (i + 1) & mask {
		if sh.slots[i].h == 0 {
			continue
		}
		e := sh.slots[i].e
		if e.until <= now {
			return i
		}
		if probed == 0 {
			first = i
		}
		if unused == math.MaxUint64 && atomic.LoadUint32(&e.used) == 0 {
			unused = i
		}
		probed++
	}
	if unused != math.MaxUint64 {
		first = unused
	}
	// Clear the marks of those passed over (after the loop: an expired
	// entry found on the way ends it, and leaves the marks as they were).
	for i, n := (h>>32)&mask, 0; n < probed && i != first; i = (i + 1) & mask {
		if sh.slots[i].h != 0 {
			atomic.StoreUint32(&sh.slots[i].e.used, 0)
			n++
		}
	}
	return first
}

// find returns the slot holding h, or the empty slot where h goes.
func (sh *shard) find(h uint64) (uint64, bool) {
	mask := uint64(len(sh.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch sh.slots[i].h {
		case h:
			return i, true
		case 0:
			return i, false
		}
	}
}

// remove empties slot i, moving back the entries after it that would no
// longer be found past the gap (deletion without tombstones).
func (sh *shard) remove(i uint64) {
	mask := uint64(len(sh.slots) - 1)
	for j := (i + 1) & mask; sh.slots[j].h != 0; j = (j + 1) & mask {
		home := sh.slots[j].h & mask
		// The entry at j stays if its home is cyclically in (i, j].
		if i <= j && i < home && home <= j || i > j && (i < home || home <= j) {
			continue
		}
		sh.slots[i] = sh.slots[j]
		i = j
	}
	sh.slots[i] = slot{}
	sh.n--
}

// grow doubles the table.
func (sh *shard) grow() {
	old := sh.slots
	sh.slots = make([]slot, 2*len(old))
	for _, sl := range old {
		if sl.h != 0 {
			i, _ := sh.find(sl.h)
			sh.slots[i] = sl
		}
	}
}

// len is the number of stored answers, expired ones included until they
// are replaced or evicted.
func (s *store) len() int { return int(s.size.Load()) }
