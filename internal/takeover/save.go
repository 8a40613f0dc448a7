package takeover

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"

	"github.com/kpr-proxy/kpr/internal/iptables/ipt"
)

// savedTable is one table of iptables-save output.
type savedTable struct {
	name string
	// chains in the order they were declared; builtin marks the built-in
	// ones (declared with a policy instead of "-").
	chains  []string
	builtin map[string]bool
	rules   []savedRule
}

// savedRule is one "-A CHAIN spec" line.
type savedRule struct {
	chain   string
	spec    string // everything after "-A CHAIN ", as iptables-save printed it
	target  string // -j/-g target, "" if none
	comment string // --comment value, "" if none
}

// parseSave reads full iptables-save output (any number of tables). Tables
// appear in the order of the input; a table listed twice is an error.
func parseSave(data []byte) ([]*savedTable, error) {
	var (
		out []*savedTable
		cur *savedTable
	)
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#':
		case line[0] == '*':
			if cur != nil {
				return nil, fmt.Errorf("iptables-save line %d: table %s starts before COMMIT of %s", n, line[1:], cur.name)
			}
			name := strings.TrimSpace(line[1:])
			if seen[name] {
				return nil, fmt.Errorf("iptables-save line %d: table %s listed twice", n, name)
			}
			seen[name] = true
			cur = &savedTable{name: name, builtin: map[string]bool{}}
			out = append(out, cur)
		case cur == nil:
			return nil, fmt.Errorf("iptables-save line %d: %q outside a table", n, line)
		case line == "COMMIT":
			cur = nil
		case line[0] == ':':
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("iptables-save line %d: bad chain declaration %q", n, line)
			}
			cur.chains = append(cur.chains, f[0])
			if f[1] != "-" {
				cur.builtin[f[0]] = true
			}
		default:
			r, err := parseRule(line)
			if err != nil {
				return nil, fmt.Errorf("iptables-save line %d: %w", n, err)
			}
			cur.rules = append(cur.rules, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading iptables-save output: %w", err)
	}
	if cur != nil {
		return nil, fmt.Errorf("iptables-save output ends inside table %s (no COMMIT)", cur.name)
	}
	return out, nil
}

// parseRule parses "[pkts:bytes] -A CHAIN spec".
func parseRule(line string) (savedRule, error) {
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			line = strings.TrimSpace(line[i+1:])
		}
	}
	rest, ok := strings.CutPrefix(line, "-A ")
	if !ok {
		return savedRule{}, fmt.Errorf("unexpected line %q (want -A CHAIN ...)", line)
	}
	chain, spec, _ := strings.Cut(strings.TrimSpace(rest), " ")
	if chain == "" {
		return savedRule{}, fmt.Errorf("rule without a chain: %q", line)
	}
	r := savedRule{chain: chain, spec: strings.TrimSpace(spec)}
	toks := ipt.Tokenize(r.spec)
	for i := 0; i+1 < len(toks); i++ {
		switch toks[i] {
		case "-j", "--jump", "-g", "--goto":
			r.target = toks[i+1]
		case "--comment":
			r.comment = toks[i+1]
		}
	}
	return r, nil
}
