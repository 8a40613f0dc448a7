package netns

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// Read-only dumps of the root namespace's state for GuardRoot. Only full
// iptables saves: `iptables-legacy-save -t X` would create table X.
var (
	IptablesSaves = [][]string{{"iptables-legacy-save"}, {"ip6tables-legacy-save"}, {"iptables-nft-save"}, {"ip6tables-nft-save"}}
	IPSetNames    = []string{"ipset", "list", "-n"}
	NFTTables     = []string{"nft", "list", "tables"}
	Addresses     = []string{"ip", "-o", "addr", "show"}
)

// GuardRoot is a TestMain body that enforces the house rule: it runs the
// tests and, when run as root, fails the run if the output of any of the
// dump commands in the machine's root namespace differs before and after.
// Commands that are not installed are left out.
func GuardRoot(m *testing.M, dumps ...[]string) {
	root := os.Geteuid() == 0
	var before string
	if root {
		before = RootState(dumps...)
	}
	code := m.Run()
	if root {
		if after := RootState(dumps...); after != before {
			fmt.Fprintf(os.Stderr, "ROOT NAMESPACE STATE CHANGED DURING TESTS\nbefore:\n%s\nafter:\n%s\n", before, after)
			code = 1
		}
	}
	os.Exit(code)
}

// RootState reads (only reads) the root namespace's state with the dump
// commands, normalized as NormalizeSave does.
func RootState(dumps ...[]string) string {
	var b strings.Builder
	for _, argv := range dumps {
		if _, err := exec.LookPath(argv[0]); err != nil {
			continue
		}
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		fmt.Fprintf(&b, "== %s (err=%v)\n%s", strings.Join(argv, " "), err, NormalizeSave(out))
	}
	return b.String()
}

var countersRe = regexp.MustCompile(`\[\d+:\d+\]`)

// NormalizeSave drops iptables-save's comment lines (they carry a
// timestamp) and blank lines, and zeroes counters: what two saves of the
// same rules have in common, and what the iptables fake prints.
func NormalizeSave(out []byte) string {
	var b strings.Builder
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimRight(line, " \r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b.WriteString(countersRe.ReplaceAllString(line, "[0:0]"))
		b.WriteByte('\n')
	}
	return b.String()
}
