package ipt

import "strings"

// Tokenize splits a restore or iptables-save rule line the way
// iptables-restore does: on blanks, with double-quoted strings as one token
// in which a backslash escapes the next character. An unterminated quote
// runs to the end of the line, as in the real parser (which accepts it).
func Tokenize(line string) []string {
	var (
		toks    []string
		cur     strings.Builder
		inTok   bool
		inQuote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inTok = true
		case !inQuote && (c == ' ' || c == '\t'):
			if inTok {
				toks = append(toks, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteByte(c)
			inTok = true
		}
	}
	if inTok {
		toks = append(toks, cur.String())
	}
	return toks
}
