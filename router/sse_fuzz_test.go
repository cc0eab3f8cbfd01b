package router

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// referenceEvents splits an SSE stream the simple way, from the spec: the
// stream is lines ending in "\n"; an event is the lines up to and including
// the first blank one ("\n" or "\r\n"); what is left at the end is a last,
// unterminated event.
func referenceEvents(s string) []string {
	var out []string
	cur := ""
	for _, line := range strings.SplitAfter(s, "\n") {
		if line == "" {
			continue
		}
		cur += line
		if line == "\n" || line == "\r\n" {
			out = append(out, cur)
			cur = ""
		}
	}
	if cur != "" {
		out = append(out, cur)
	}
	return out
}

// readEvent frames exactly as the reference does, for any stream and any
// reader buffer size (lines longer than the buffer included), and loses
// or adds no byte.
func FuzzReadEvent(f *testing.F) {
	for _, s := range []string{
		"data: {\"a\":1}\n\ndata: [DONE]\n\n", ": keep-alive\n\n\n", "data: x\r\n\r\n", "data: no end",
		"event: e\ndata: " + strings.Repeat("y", 100) + "\n\n", "\r\n\r\n\n", "data: a\r\r\n\n",
	} {
		f.Add(s, uint8(0))
		f.Add(s, uint8(3))
	}
	f.Fuzz(func(t *testing.T, stream string, size uint8) {
		br := bufio.NewReaderSize(strings.NewReader(stream), 16+int(size%48)) // 16 is bufio's minimum
		var got []string
		var buf []byte
		for {
			ev, err := readEvent(br, buf[:0])
			if len(ev) > 0 {
				got = append(got, string(ev))
			}
			buf = ev
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("readEvent: %v", err)
			}
			if len(ev) == 0 {
				t.Fatal("an event without bytes before the end of the stream")
			}
		}
		want := referenceEvents(stream)
		if strings.Join(got, "") != stream {
			t.Fatalf("bytes lost or added: got %q from %q", got, stream)
		}
		if len(got) != len(want) {
			t.Fatalf("framing %q, want %q", got, want)
		}
		for i := range got {
			if !bytes.Equal([]byte(got[i]), []byte(want[i])) {
				t.Fatalf("event %d = %q, want %q (all: %q)", i, got[i], want[i], got)
			}
		}
	})
}
