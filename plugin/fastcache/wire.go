package fastcache

import (
	"encoding/binary"
	"errors"
)

// The fast path reads queries and writes answers as wire bytes. It only
// answers what it understands completely: anything else goes to the plugin
// chain unchanged, and the plugin chain's answer is the reference.

const (
	headerLen = 12
	maxName   = 255

	flagQR     = 0x8000
	flagOpcode = 0x7800
	flagTC     = 0x0200
	flagRD     = 0x0100
	flagZ      = 0x0040
	flagAD     = 0x0020
	flagCD     = 0x0010

	typeOPT  = 41
	typeDS   = 43
	typeIXFR = 251
	typeAXFR = 252
	classIN  = 1

	ednsDO = 0x8000

	// Bits of the last key byte: the parts of a query, besides its name,
	// type and class, that change CoreDNS's answer.
	keyDO   = 1 << 0
	keyCD   = 1 << 1
	keyAD   = 1 << 2
	keyEDNS = 1 << 3

	// maxKey is the longest key: a name, type, class and the flag byte.
	maxKey = maxName + 5
)

// query is what the fast path needs from one query packet.
type query struct {
	// key is the lookup key, the lowercased wire name followed by type,
	// class and the flag byte; it aliases the buffer given to parseQuery.
	key []byte
	// nameLen is the wire length of the name: the question occupies
	// packet[12 : 12+nameLen+4].
	nameLen int
	// size is the largest answer the client takes over UDP.
	size int
	// udpSize is the OPT record's raw buffer size, echoed in the answer as
	// CoreDNS does.
	udpSize uint16
	rd, do  bool
	qtype   uint16
	// labels marks the offsets in key at which a label starts.
	labels [4]uint64
}

// labelAt reports whether a label of the name starts at offset o of key.
func (q *query) labelAt(o int) bool { return q.labels[o>>6]&(1<<(o&63)) != 0 }

// parseQuery reads a query packet into q, writing the key into buf (at
// least maxKey bytes). It reports false for anything the fast path does not
// answer: responses, other opcodes, several or no questions, records in the
// answer or authority sections, truncated queries, compression in the
// question, classes other than IN, DS and zone transfers (which CoreDNS
// routes differently), an additional record other than one plain OPT (EDNS
// options such as cookies or client subnet, versions other than 0, flags
// other than DO), the Z bit, and trailing bytes.
func parseQuery(p []byte, buf []byte, q *query) bool {
	if len(p) < headerLen+5 {
		return false
	}
	flags := binary.BigEndian.Uint16(p[2:])
	if flags&(flagQR|flagOpcode|flagTC|flagZ) != 0 {
		return false
	}
	if binary.BigEndian.Uint16(p[4:]) != 1 || binary.BigEndian.Uint16(p[6:]) != 0 || binary.BigEndian.Uint16(p[8:]) != 0 {
		return false
	}
	ar := binary.BigEndian.Uint16(p[10:])
	if ar > 1 {
		return false
	}
	// The name, lowercased into the key.
	off := headerLen
	k := buf[:0]
	q.labels = [4]uint64{}
	for {
		if off >= len(p) {
			return false
		}
		l := int(p[off])
		if l > 63 { // a compression pointer or an extended label type
			return false
		}
		if off+1+l > len(p) || len(k)+1+l > maxName {
			return false
		}
		q.labels[len(k)>>6] |= 1 << (len(k) & 63)
		k = append(k, byte(l))
		for _, c := range p[off+1 : off+1+l] {
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			k = append(k, c)
		}
		off += 1 + l
		if l == 0 {
			break
		}
	}
	q.nameLen = off - headerLen
	if off+4 > len(p) {
		return false
	}
	qtype := binary.BigEndian.Uint16(p[off:])
	qclass := binary.BigEndian.Uint16(p[off+2:])
	q.qtype = qtype
	if qclass != classIN || qtype == typeDS || qtype == typeAXFR || qtype == typeIXFR || qtype == typeOPT {
		return false
	}
	off += 4
	var kf byte
	if flags&flagCD != 0 {
		kf |= keyCD
	}
	if flags&flagAD != 0 {
		kf |= keyAD
	}
	q.rd = flags&flagRD != 0
	q.do, q.udpSize, q.size = false, 0, 512
	if ar == 1 {
		// One OPT record: root name, type, class (buffer size), TTL
		// (extended rcode, version, flags), empty rdata.
		if off+11 != len(p) || p[off] != 0 || binary.BigEndian.Uint16(p[off+1:]) != typeOPT {
			return false
		}
		q.udpSize = binary.BigEndian.Uint16(p[off+3:])
		ext, version, eflags := p[off+5], p[off+6], binary.BigEndian.Uint16(p[off+7:])
		if ext != 0 || version != 0 || eflags&^ednsDO != 0 || binary.BigEndian.Uint16(p[off+9:]) != 0 {
			return false
		}
		kf |= keyEDNS
		if eflags&ednsDO != 0 {
			kf |= keyDO
			q.do = true
		}
		if q.udpSize > 512 {
			q.size = int(q.udpSize)
		}
	} else if off != len(p) {
		return false
	}
	k = append(k, p[off-4:off]...)
	k = append(k, kf)
	q.key = k
	return true
}

// layout is where an answer's patchable fields are.
type layout struct {
	// nameLen is the wire length of the question name.
	nameLen int
	// ttls are the offsets of every TTL but the OPT record's.
	ttls []uint16
	// opt is the offset of the OPT record's class (the echoed buffer
	// size), or 0 when the answer has none.
	opt int
	// ttl is the TTL every record carried when the answer was stored:
	// CoreDNS's cache gives all records of an answer the same TTL.
	ttl uint32
}

var errLayout = errors.New("answer is not a single-question response")

// parseLayout walks a packed answer and records where its TTLs and its OPT
// record are. It fails on anything but a response with one uncompressed
// question, and on records whose TTLs differ.
func parseLayout(p []byte) (layout, error) {
	var l layout
	if len(p) < headerLen || binary.BigEndian.Uint16(p[2:])&flagQR == 0 || binary.BigEndian.Uint16(p[4:]) != 1 {
		return l, errLayout
	}
	off := headerLen
	for {
		if off >= len(p) || p[off] > 63 {
			return l, errLayout
		}
		n := int(p[off])
		off += 1 + n
		if n == 0 {
			break
		}
	}
	l.nameLen = off - headerLen
	off += 4
	rrs := int(binary.BigEndian.Uint16(p[6:])) + int(binary.BigEndian.Uint16(p[8:])) + int(binary.BigEndian.Uint16(p[10:]))
	first := true
	for range rrs {
		var err error
		if off, err = skipName(p, off); err != nil {
			return l, err
		}
		if off+10 > len(p) {
			return l, errLayout
		}
		typ := binary.BigEndian.Uint16(p[off:])
		rdlen := int(binary.BigEndian.Uint16(p[off+8:]))
		if typ == typeOPT {
			if l.opt != 0 {
				return l, errLayout
			}
			l.opt = off + 2
		} else {
			ttl := binary.BigEndian.Uint32(p[off+4:])
			if first {
				l.ttl, first = ttl, false
			} else if ttl != l.ttl {
				return l, errors.New("answer records have different TTLs")
			}
			if off+4 > 0xffff {
				return l, errLayout
			}
			l.ttls = append(l.ttls, uint16(off+4))
		}
		off += 10 + rdlen
		if off > len(p) {
			return l, errLayout
		}
	}
	if off != len(p) {
		return l, errLayout
	}
	if first {
		return l, errors.New("answer has no records to take a TTL from")
	}
	return l, nil
}

// skipName returns the offset after the (possibly compressed) name at off.
func skipName(p []byte, off int) (int, error) {
	for {
		if off >= len(p) {
			return 0, errLayout
		}
		c := p[off]
		switch {
		case c == 0:
			return off + 1, nil
		case c&0xC0 == 0xC0:
			if off+2 > len(p) {
				return 0, errLayout
			}
			return off + 2, nil
		case c > 63:
			return 0, errLayout
		}
		off += 1 + int(c)
	}
}

// answer writes into out the stored response of e for query packet p: the
// query's ID, RD bit and question (with the query's case, for clients that
// randomise it), the query's EDNS buffer size, and ttl in every record. out
// must hold the response's bytes.
func answer(out []byte, e *entry, p []byte, q *query, ttl uint32) []byte {
	resp := e.resp()
	out = out[:len(resp)]
	copy(out, resp)
	out[0], out[1] = p[0], p[1]
	if q.rd {
		out[2] |= flagRD >> 8
	} else {
		out[2] &^= flagRD >> 8
	}
	copy(out[headerLen:headerLen+q.nameLen], p[headerLen:headerLen+q.nameLen])
	if e.opt != 0 {
		binary.BigEndian.PutUint16(out[e.opt:], q.udpSize)
	}
	offs := e.ttlOffsets()
	for i := 0; i+1 < len(offs); i += 2 {
		binary.BigEndian.PutUint32(out[binary.BigEndian.Uint16(offs[i:]):], ttl)
	}
	return out
}
