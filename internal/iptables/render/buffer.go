package render

import (
	"hash/fnv"
	"strconv"
)

// lineBuffer accumulates iptables-restore lines. Words are written as they
// are; a word with a space or quote is quoted so iptables-restore's parser
// reads it back as one argument (only comments ever need it).
type lineBuffer struct {
	b     []byte
	lines int
}

func (w *lineBuffer) word(s string) {
	if len(w.b) > 0 && w.b[len(w.b)-1] != '\n' {
		w.b = append(w.b, ' ')
	}
	if needsQuote(s) {
		w.b = strconv.AppendQuote(w.b, s)
		return
	}
	w.b = append(w.b, s...)
}

func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ' ', '\t', '"', '\'':
			return true
		}
	}
	return false
}

func (w *lineBuffer) words(ws ...string) {
	for _, s := range ws {
		w.word(s)
	}
}

func (w *lineBuffer) end() {
	w.b = append(w.b, '\n')
	w.lines++
}

// chain writes a chain declaration, ":NAME - [0:0]". In a --noflush
// restore it creates the chain or flushes it if it exists.
func (w *lineBuffer) chain(name string) {
	w.b = append(w.b, ':')
	w.b = append(w.b, name...)
	w.b = append(w.b, " - [0:0]\n"...)
	w.lines++
}

// line writes one complete line.
func (w *lineBuffer) line(ws ...string) {
	w.words(ws...)
	w.end()
}

func (w *lineBuffer) reset() {
	w.b = w.b[:0]
	w.lines = 0
}

func (w *lineBuffer) sum() uint64 {
	h := fnv.New64a()
	h.Write(w.b)
	return h.Sum64()
}

// comment sanitises free text for "-m comment --comment": iptables limits it
// to 255 bytes, and a stray quote or newline would break the batch for every
// Service, which a malformed object must never be able to do.
func comment(s string) string {
	ok := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			ok = false
			break
		}
	}
	if ok && len(s) <= 255 {
		return s
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(out) < 255; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			c = '_'
		}
		out = append(out, c)
	}
	return string(out)
}
