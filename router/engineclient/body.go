package engineclient

import (
	"bytes"
	"io"
)

type bodyMode int

const (
	modeLength  bodyMode = iota // Content-Length bytes
	modeChunked                 // chunked transfer coding
	modeClose                   // until the engine closes the connection
)

// bodyReader reads one answer's body off the connection's buffered
// socket, undoing chunked coding. It belongs to the connection.
type bodyReader struct {
	cn       *conn
	mode     bodyMode
	left     int64 // modeLength: bytes to come; modeChunked: of this chunk
	needCRLF bool  // modeChunked: a chunk's data ended, its CRLF is next
	eof      bool  // the body ended as framed (the connection may be reused)
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	switch b.mode {
	case modeLength:
		if b.left == 0 {
			b.eof = true
			return 0, io.EOF
		}
		n, err := b.readLeft(p)
		if b.left == 0 {
			b.eof = true
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	case modeChunked:
		if b.left == 0 {
			if err := b.nextChunk(); err != nil {
				return 0, err
			}
			if b.eof {
				return 0, io.EOF
			}
		}
		n, err := b.readLeft(p)
		if b.left == 0 {
			b.needCRLF = true
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	default:
		n, err := b.cn.br.Read(p)
		return n, err // EOF is the end; the connection is not reused
	}
}

// readLeft reads at most the b.left bytes still due (of the body or of
// the chunk) and counts them off.
func (b *bodyReader) readLeft(p []byte) (int, error) {
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.cn.br.Read(p)
	b.left -= int64(n)
	return n, err
}

// nextChunk reads the next chunk's size line (and, after the last chunk,
// the trailers, which are dropped).
func (b *bodyReader) nextChunk() error {
	if b.needCRLF {
		line, err := b.cn.readLine()
		if err != nil {
			return unexpected(err)
		}
		if len(line) != 0 {
			return errMalformed
		}
		b.needCRLF = false
	}
	line, err := b.cn.readLine()
	if err != nil {
		return unexpected(err)
	}
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i] // chunk extensions
	}
	size, ok := parseHex(bytes.TrimSpace(line))
	if !ok {
		return errMalformed
	}
	if size > 0 {
		b.left = size
		return nil
	}
	for { // trailers, to the blank line
		line, err := b.cn.readLine()
		if err != nil {
			return unexpected(err)
		}
		if len(line) == 0 {
			b.eof = true
			return nil
		}
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func parseHex(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | int64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}
