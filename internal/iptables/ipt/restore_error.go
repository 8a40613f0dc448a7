package ipt

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// restoreLineRe matches every way iptables-restore 1.8 names the failing
// line: "line 3 failed" (legacy and nft), "Error occurred at line: 3" (parse
// errors), "line 3: CHAIN_DEL failed" (nft kernel errors) and "COMMIT
// expected at line 3".
var restoreLineRe = regexp.MustCompile(`\bline:?\s+(\d+)`)

// ParseRestoreLine extracts the failing input line from iptables-restore's
// error output, or returns 0.
func ParseRestoreLine(stderr string) int {
	m := restoreLineRe.FindStringSubmatch(stderr)
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// ContextLines returns line (1-based) of data with up to n lines either side,
// each prefixed with its line number; the offending line is marked with ">".
// It returns nil when line is outside data. This is kube-proxy's practice of
// logging the neighbourhood of a failed restore: the message alone rarely
// says which Service's rules broke.
func ContextLines(data []byte, line, n int) []string {
	if line <= 0 || n < 0 {
		return nil
	}
	lines := bytes.Split(data, []byte("\n"))
	// A final newline ends the last line; it does not start another one.
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	if line > len(lines) {
		return nil
	}
	first, last := max(1, line-n), min(len(lines), line+n)
	width := len(strconv.Itoa(last))
	out := make([]string, 0, last-first+1)
	for i := first; i <= last; i++ {
		mark := "  "
		if i == line {
			mark = "> "
		}
		out = append(out, fmt.Sprintf("%s%*d: %s", mark, width, i, strings.TrimRight(string(lines[i-1]), "\r")))
	}
	return out
}
