package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/kpr-proxy/kpr/e2e/framework"
)

// Reading and resetting the node namespace's rules. Everything here runs
// inside the node's network namespace (ip netns exec), never the root one.

// NATCheck is what one iptables-save of the nat table says about the bench
// Services.
type NATCheck struct {
	// Found is how many of the expected ClusterIP:port pairs have a rule
	// jumping to a per-Service chain; Missing lists a few that do not.
	Found, Expected int
	Missing         []string
	// DNATRules counts "-j DNAT" rules (one per programmed endpoint);
	// Rules counts all "-A" lines of the table; Bytes is the save's size.
	DNATRules, Rules, Bytes int
}

// Complete says every expected Service is programmed.
func (c NATCheck) Complete() bool { return c.Found == c.Expected }

func (c NATCheck) String() string {
	s := fmt.Sprintf("%d/%d Services, %d DNAT rules, %d rules in nat", c.Found, c.Expected, c.DNATRules, c.Rules)
	if len(c.Missing) > 0 {
		s += fmt.Sprintf(" (missing e.g. %s)", strings.Join(c.Missing, ", "))
	}
	return s
}

// serviceChainPrefixes are the per-Service chains a ClusterIP rule jumps to:
// upstream's KUBE-SVC-/KUBE-SVL- and kpr's KPR-SVC-/KPR-SVL-. (Upstream
// jumps to KUBE-EXT- only for external destinations.)
var serviceChainPrefixes = []string{"KUBE-SVC-", "KUBE-SVL-", "KPR-SVC-", "KPR-SVL-"}

// CheckNAT reads `iptables-save -t nat` output: which of want (ClusterIPs on
// port) have a "-d <ip>/32 … --dport <port> -j <per-Service chain>" rule.
// Both proxies write such a rule for every ClusterIP (kpr's dispatch tree
// keeps an exact-destination rule at its leaves), so the same check serves
// both.
func CheckNAT(save []byte, want []netip.Addr, port int) NATCheck {
	seen := make(map[netip.Addr]bool, len(want))
	c := NATCheck{Expected: len(want), Bytes: len(save)}
	dport := fmt.Sprintf("--dport %d", port)
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		c.Rules++
		if strings.Contains(line, "-j DNAT") {
			c.DNATRules++
			continue
		}
		if !strings.Contains(line, dport) || !jumpsToServiceChain(line) {
			continue
		}
		if ip, ok := destination(line); ok {
			seen[ip] = true
		}
	}
	c.count(seen, want)
	return c
}

// count fills Found and the first few Missing from the destinations seen.
func (c *NATCheck) count(seen map[netip.Addr]bool, want []netip.Addr) {
	for _, ip := range want {
		if seen[ip] {
			c.Found++
		} else if len(c.Missing) < 3 {
			c.Missing = append(c.Missing, ip.String())
		}
	}
}

func jumpsToServiceChain(line string) bool {
	_, target, ok := strings.Cut(line, " -j ")
	if !ok {
		return false
	}
	for _, p := range serviceChainPrefixes {
		if strings.HasPrefix(target, p) {
			return true
		}
	}
	return false
}

// destination extracts "-d a.b.c.d/32" (iptables-save's form) or "-d a.b.c.d".
func destination(line string) (netip.Addr, bool) {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] != "-d" {
			continue
		}
		v := f[i+1]
		if p, err := netip.ParsePrefix(v); err == nil {
			if p.IsSingleIP() {
				return p.Addr(), true
			}
			return netip.Addr{}, false
		}
		if a, err := netip.ParseAddr(v); err == nil {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// SaveTable runs the backend's iptables-save for one table in the node.
func SaveTable(n *framework.NetNS, save, table string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := n.Command(save, "-t", table)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -t %s in %s: %v: %s", save, table, n.Name, err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// saveAll runs a full iptables-save (all tables of that backend and family).
func saveAll(n *framework.NetNS, save string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := n.Command(save)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s in %s: %v: %s", save, n.Name, err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// splitTables splits iptables-save output into table name → section text
// ("*name" through "COMMIT", comments dropped).
func splitTables(save []byte) (map[string]string, []string) {
	sections := map[string]string{}
	var order []string
	var cur string
	var b strings.Builder
	for _, line := range strings.Split(string(save), "\n") {
		switch {
		case strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "":
		case strings.HasPrefix(line, "*"):
			cur = strings.TrimSpace(line[1:])
			b.Reset()
			b.WriteString(line + "\n")
		case line == "COMMIT":
			if cur != "" {
				b.WriteString("COMMIT\n")
				sections[cur] = b.String()
				order = append(order, cur)
			}
			cur = ""
		default:
			if cur != "" {
				b.WriteString(line + "\n")
			}
		}
	}
	return sections, order
}

// proxyChains lists chains of either proxy (KUBE-*, KPR-*) in save output.
func proxyChains(save []byte) []string {
	var out []string
	for _, line := range strings.Split(string(save), "\n") {
		if !strings.HasPrefix(line, ":") {
			continue
		}
		name, _, _ := strings.Cut(line[1:], " ")
		if strings.HasPrefix(name, "KUBE-") || strings.HasPrefix(name, "KPR-") {
			out = append(out, name)
		}
	}
	return out
}

// tool is one backend and family's binaries.
type tool struct {
	backend       string // "legacy" or "nft"
	label         string // "iptables-legacy", "ip6tables-nft", …
	save, restore string
	nftFamily     string // nft's family of the tables it makes: ip or ip6
}

func backendTools(backend string) ([]tool, error) {
	var out []tool
	for _, fam := range []struct{ base, nft string }{{"iptables", "ip"}, {"ip6tables", "ip6"}} {
		save, err := exec.LookPath(fam.base + "-" + backend + "-save")
		if err != nil {
			return nil, err
		}
		restore, err := exec.LookPath(fam.base + "-" + backend + "-restore")
		if err != nil {
			return nil, err
		}
		out = append(out, tool{backend: backend, label: fam.base + "-" + backend, save: save, restore: restore, nftFamily: fam.nft})
	}
	return out, nil
}

// KernelState resets the node namespace to the rules it had before any
// proxy ran (what the CNI and harness installed), for both backends and both
// families, and flushes conntrack, so every proxy starts cold.
type KernelState struct {
	node     *framework.NetNS
	baseline map[string]map[string]string // tool label → table → section
	tools    []tool
}

// SnapshotKernel records the node's current rules as the baseline. Both
// backends are read when installed.
func SnapshotKernel(node *framework.NetNS, backends []string) (*KernelState, error) {
	k := &KernelState{node: node, baseline: map[string]map[string]string{}}
	for _, b := range backends {
		if b == BackendNFT {
			if _, err := exec.LookPath("nft"); err != nil {
				return nil, fmt.Errorf("the nft tool is needed to reset nf_tables rules between runs (apt-get install nftables): %w", err)
			}
		}
		tools, err := backendTools(b)
		if err != nil {
			return nil, fmt.Errorf("iptables %s tools: %w", b, err)
		}
		for _, t := range tools {
			save, err := saveAll(node, t.save)
			if err != nil {
				return nil, err
			}
			if ch := proxyChains(save); len(ch) > 0 {
				return nil, fmt.Errorf("node %s already has proxy chains (%s…) in %s before any proxy ran", node.Name, ch[0], t.label)
			}
			k.baseline[t.label], _ = splitTables(save)
			k.tools = append(k.tools, t)
		}
	}
	return k, nil
}

// Reset restores the baseline: every table the proxies touched is replaced
// by its baseline content (or emptied), then conntrack is flushed. nf_tables
// tables are deleted with nft first (one cheap operation, where reading or
// flushing 100k chains through iptables-nft takes long). It checks no
// KUBE-/KPR- chain is left.
func (k *KernelState) Reset() error {
	var nftTables map[string][]string // nft family → tables, read once
	for _, t := range k.tools {
		base := k.baseline[t.label]
		var batch strings.Builder
		if t.backend == BackendNFT {
			if nftTables == nil {
				var err error
				if nftTables, err = k.listNFTTables(); err != nil {
					return err
				}
			}
			for _, table := range nftTables[t.nftFamily] {
				if !iptablesTables[table] {
					continue // not iptables-nft's: leave it
				}
				if _, err := k.node.Exec("nft", "delete", "table", t.nftFamily, table); err != nil {
					return err
				}
			}
			for _, table := range sortedTableNames(base) {
				batch.WriteString(base[table])
			}
		} else {
			save, err := saveAll(k.node, t.save)
			if err != nil {
				return err
			}
			_, tables := splitTables(save)
			for _, table := range tables {
				if sec, ok := base[table]; ok {
					batch.WriteString(sec)
				} else {
					fmt.Fprintf(&batch, "*%s\nCOMMIT\n", table)
				}
			}
		}
		if batch.Len() > 0 {
			cmd := k.node.Command(t.restore)
			cmd.Stdin = strings.NewReader(batch.String())
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%s (reset to baseline) in %s: %v: %s", t.restore, k.node.Name, err, bytes.TrimSpace(out))
			}
		}
		after, err := saveAll(k.node, t.save)
		if err != nil {
			return err
		}
		if ch := proxyChains(after); len(ch) > 0 {
			return fmt.Errorf("after reset, %s still has %d proxy chains (%s…)", t.label, len(ch), ch[0])
		}
	}
	if _, err := exec.LookPath("conntrack"); err == nil {
		// Exit status 1 with "0 flow entries" is not an error worth failing on.
		_, _ = k.node.Exec("conntrack", "-F")
	}
	return nil
}

// iptablesTables are the tables iptables-nft may create.
var iptablesTables = map[string]bool{"filter": true, "nat": true, "mangle": true, "raw": true, "security": true}

// listNFTTables runs `nft list tables` (names only: cheap at any size).
func (k *KernelState) listNFTTables() (map[string][]string, error) {
	out, err := k.node.Exec("nft", "list", "tables")
	if err != nil {
		return nil, err
	}
	return parseNFTTables(out), nil
}

// parseNFTTables reads "table ip nat" lines.
func parseNFTTables(out string) map[string][]string {
	m := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" {
			m[f[1]] = append(m[f[1]], f[2])
		}
	}
	return m
}

func sortedTableNames(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// IPVSAvailable says whether the kernel has IPVS, and if not, why. It only
// looks (/proc/net/ip_vs appears in a namespace once ip_vs is loaded,
// /sys/module/ip_vs once it is loaded or built in); it loads nothing.
func IPVSAvailable(node *framework.NetNS) (bool, string) {
	if _, err := os.Stat("/sys/module/ip_vs"); err == nil {
		return true, ""
	}
	found := false
	_ = node.Do(func() error {
		_, err := os.Stat("/proc/net/ip_vs")
		found = err == nil
		return nil
	})
	if found {
		return true, ""
	}
	return false, "this kernel has no IPVS (no /sys/module/ip_vs, no /proc/net/ip_vs: CONFIG_IP_VS unset or ip_vs not loaded; the bench does not load modules)"
}

// CheckIPVS reads /proc/net/ip_vs in the node: which of want (on port) are
// TCP virtual services.
func CheckIPVS(node *framework.NetNS, want []netip.Addr, port int) (NATCheck, error) {
	out, err := node.Exec("cat", "/proc/net/ip_vs")
	if err != nil {
		return NATCheck{}, err
	}
	return checkIPVSText([]byte(out), want, port), nil
}

// checkIPVSText parses /proc/net/ip_vs: "TCP  C613C00A:0050 rr" lines are
// virtual services, "  -> C6120101:1F90 Masq 1 0 0" their real servers.
func checkIPVSText(text []byte, want []netip.Addr, port int) NATCheck {
	c := NATCheck{Expected: len(want), Bytes: len(text)}
	seen := map[netip.Addr]bool{}
	for _, line := range strings.Split(string(text), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "->" {
			if ipHex, _, ok := strings.Cut(f[1], ":"); ok && len(ipHex) == 8 && isHex(ipHex) {
				c.DNATRules++ // a real server (the header line is "-> RemoteAddress:Port …")
			}
			continue
		}
		if len(f) < 2 || f[0] != "TCP" {
			continue
		}
		c.Rules++
		hexIP, hexPort, ok := strings.Cut(f[1], ":")
		if !ok || len(hexIP) != 8 {
			continue
		}
		var b [4]byte
		var p int
		if _, err := fmt.Sscanf(hexIP, "%02X%02X%02X%02X", &b[0], &b[1], &b[2], &b[3]); err != nil {
			continue
		}
		if _, err := fmt.Sscanf(hexPort, "%X", &p); err != nil || p != port {
			continue
		}
		seen[netip.AddrFrom4(b)] = true
	}
	c.count(seen, want)
	return c
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return s != ""
}
