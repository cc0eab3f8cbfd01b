package jsonscan

// maxCuts bounds the members one Cuts removes: an engine or client sends
// each field once; a body repeating one many times is refused by callers.
const maxCuts = 8

// Cuts lists members of one object to leave out when it is copied, chosen
// during a Members walk of it, so the copy needs no second parse.
type Cuts struct {
	n    int
	list [maxCuts]cut
}

type cut struct{ start, end, prevEnd int }

// Add records the member the walk is at; false when Cuts is full.
func (c *Cuts) Add(it *Iter) bool {
	if c.n == maxCuts || !it.object {
		return false
	}
	c.list[c.n] = cut{start: it.start, end: it.vEnd, prevEnd: it.prevEnd}
	c.n++
	return true
}

// Len is how many members are cut.
func (c *Cuts) Len() int { return c.n }

// AppendTo appends doc, the text the walk read (or a prefix of it holding
// every cut member), to dst without the cut members and their commas; the
// rest is copied byte for byte. Bytes only move towards the start, so dst
// may be doc's own memory up to the first cut (an in-place edit).
func (c *Cuts) AppendTo(dst, doc []byte) []byte { return c.AppendFrom(dst, doc, 0) }

// AppendFrom is AppendTo for doc[from:], from at or before every cut (the
// caller has written what precedes it).
func (c *Cuts) AppendFrom(dst, doc []byte, from int) []byte {
	pos := from
	for k := 0; k < c.n; {
		// Members cut one after another go as one block.
		m := k + 1
		for m < c.n && c.list[m].prevEnd == c.list[m-1].end {
			m++
		}
		from, to := c.list[k].start, c.list[m-1].end
		if p := c.list[k].prevEnd; p >= 0 {
			from = p // the comma before the block goes with it
		} else if j := skipWS(doc, to); j < len(doc) && doc[j] == ',' {
			to = skipWS(doc, j+1) // the block opens the object: the comma after it goes
		}
		dst = append(dst, doc[pos:from]...)
		pos, k = to, m
	}
	return append(dst, doc[pos:]...)
}
