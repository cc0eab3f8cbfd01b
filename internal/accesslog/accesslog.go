// Package accesslog writes one line per request, in the same text or JSON
// shape as the hclog lines beside it, into a buffer that an owner flushes
// every FlushEvery (and when it fills). Formatting through hclog cost
// about ten allocations and a write(2) per request; here a line is
// appended to a reused buffer and the lines of many requests go out in
// one write.
package accesslog

import (
	"bytes"
	"context"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// FlushEvery is how long a line may wait in the buffer.
const FlushEvery = 100 * time.Millisecond

const (
	flushAt = 32 << 10 // flush when the buffer holds this much
	// maxWrite keeps each write under PIPE_BUF-sized pieces cut at line
	// ends, so lines written by the process's other loggers to the same
	// pipe never land inside one of ours.
	maxWrite = 4 << 10
)

// Field is one key and value of a line. Exactly one of S, I or F is used,
// by Kind.
type Field struct {
	Key  string
	Kind Kind
	S    string
	I    int64
	F    float64
}

// Kind says which value a Field holds.
type Kind uint8

// The kinds of field values.
const (
	String Kind = iota
	Int
	Float
)

// Str, Int64 and Float64 make fields.
func Str(k, v string) Field         { return Field{Key: k, Kind: String, S: v} }
func Int64(k string, v int64) Field { return Field{Key: k, Kind: Int, I: v} }
func Float64(k string, v float64) Field {
	return Field{Key: k, Kind: Float, F: v}
}

// Log is a buffered access log. Its zero value is not usable; use New.
type Log struct {
	out    io.Writer
	name   string // the logger's name, as hclog prints it
	json   bool
	mu     sync.Mutex
	buf    []byte
	ticker bool // an owner is running Run: writes may wait for it
}

// New writes lines for the logger called name (hclog's Name) to out, as
// JSON when json is set.
func New(out io.Writer, name string, json bool) *Log {
	return &Log{out: out, name: name, json: json, buf: make([]byte, 0, flushAt+maxWrite)}
}

// Run flushes every FlushEvery until ctx ends, then flushes once more;
// after it returns, lines are written at once.
func (l *Log) Run(ctx context.Context) {
	l.mu.Lock()
	l.ticker = true
	l.mu.Unlock()
	t := time.NewTicker(FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.mu.Lock()
			l.ticker = false
			l.flushLocked()
			l.mu.Unlock()
			return
		case <-t.C:
			l.Flush()
		}
	}
}

// Flush writes out what is buffered.
func (l *Log) Flush() {
	l.mu.Lock()
	l.flushLocked()
	l.mu.Unlock()
}

func (l *Log) flushLocked() {
	b := l.buf
	for len(b) > 0 {
		n := len(b)
		if n > maxWrite {
			if i := bytes.LastIndexByte(b[:maxWrite], '\n'); i >= 0 {
				n = i + 1
			} else if i := bytes.IndexByte(b, '\n'); i >= 0 {
				n = i + 1 // one line longer than maxWrite: whole
			}
		}
		_, _ = l.out.Write(b[:n])
		b = b[n:]
	}
	l.buf = l.buf[:0]
}

// Info writes one info line with msg and fields, stamped now.
func (l *Log) Info(msg string, fields ...Field) {
	now := time.Now()
	l.mu.Lock()
	if l.json {
		l.buf = l.appendJSON(l.buf, now, msg, fields)
	} else {
		l.buf = l.appendText(l.buf, now, msg, fields)
	}
	if !l.ticker || len(l.buf) >= flushAt {
		l.flushLocked()
	}
	l.mu.Unlock()
}

// appendText is hclog's text shape:
// 2026-12-02T13:53:24.057Z [INFO]  name: msg: k=v k="v w"
func (l *Log) appendText(b []byte, now time.Time, msg string, fields []Field) []byte {
	b = now.AppendFormat(b, "2006-01-02T15:04:05.000Z0700")
	b = append(b, " [INFO]  "...)
	if l.name != "" {
		b = append(b, l.name...)
		b = append(b, ": "...)
	}
	b = append(b, msg...)
	b = append(b, ':')
	for _, f := range fields {
		b = append(b, ' ')
		b = append(b, f.Key...)
		b = append(b, '=')
		switch f.Kind {
		case Int:
			b = strconv.AppendInt(b, f.I, 10)
		case Float:
			b = strconv.AppendFloat(b, f.F, 'g', -1, 64)
		default:
			if needsQuote(f.S) {
				b = strconv.AppendQuote(b, f.S)
			} else {
				b = append(b, f.S...)
			}
		}
	}
	return append(b, '\n')
}

// appendJSON is hclog's JSON shape: @level, @message, @module, @timestamp
// and the fields.
func (l *Log) appendJSON(b []byte, now time.Time, msg string, fields []Field) []byte {
	b = append(b, `{"@level":"info","@message":`...)
	b = appendJSONString(b, msg)
	if l.name != "" {
		b = append(b, `,"@module":`...)
		b = appendJSONString(b, l.name)
	}
	b = append(b, `,"@timestamp":"`...)
	b = now.AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, '"')
	for _, f := range fields {
		b = append(b, ',')
		b = appendJSONString(b, f.Key)
		b = append(b, ':')
		switch f.Kind {
		case Int:
			b = strconv.AppendInt(b, f.I, 10)
		case Float:
			b = strconv.AppendFloat(b, f.F, 'g', -1, 64)
		default:
			b = appendJSONString(b, f.S)
		}
	}
	return append(b, "}\n"...)
}

// needsQuote: hclog quotes values with spaces, quotes or control bytes.
func needsQuote(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == '"' || c == '=' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

const hex = "0123456789abcdef"

// appendJSONString appends s as a JSON string (control bytes escaped,
// invalid UTF-8 replaced).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
