package image

// What goes into the guest. Changing anything here changes the base image's
// cache key (specKey), so the next run rebuilds it.

// KernelMeta is the Debian metapackage whose dependency names the kernel
// (bookworm: linux-image-6.1.0-N-amd64).
const KernelMeta = "linux-image-amd64"

// userPackages are the Debian packages whose files the guest's userspace
// comes from. Shared libraries the listed binaries need are taken from these
// first (so the guest gets one consistent set), then from the host.
var userPackages = []string{
	"busybox-static",
	"iptables", "libip4tc2", "libip6tc2", "libxtables12", "libnftnl11",
	"ipset", "libipset13",
	"iproute2", "libbpf1", "libelf1", "libbsd0", "libmd0", "libcap2", "zlib1g", "libzstd1",
	"conntrack", "libnetfilter-conntrack3", "libnfnetlink0", "libmnl0",
	"ipvsadm", "libnl-3-200", "libnl-genl-3-200", "libpopt0",
	"libc6",
	"netbase", // /etc/protocols and /etc/services: ipset silently fails without them
}

// binaries are copied from the unpacked packages with their libraries
// (ELF DT_NEEDED closure and the program interpreter). Globs allowed.
var binaries = []string{
	"bin/ip", "bin/ss",
	"sbin/ipvsadm",
	"usr/sbin/ipset",
	"usr/sbin/conntrack",
	"usr/sbin/xtables-legacy-multi",
	"usr/sbin/xtables-nft-multi",
	// iptables loads its match/target extensions from here at run time.
	"usr/lib/x86_64-linux-gnu/xtables/*.so",
}

// symlinks are the names the tools are called by, as the packages'
// maintainer scripts (update-alternatives) would set them up. iptables,
// ip6tables and their -save/-restore are pointed at a backend by the agent
// at node setup.
var symlinks = map[string]string{
	"sbin/ip": "/bin/ip",
}

// iptablesFamilies and iptablesSuffixes name the commands xtables-*-multi
// answers to: <family>-<backend><suffix> (iptables-nft-save, …) and the
// backend-less <family><suffix> that vm.SetupNode points at one backend.
var (
	iptablesFamilies = []string{"iptables", "ip6tables"}
	iptablesSuffixes = []string{"", "-save", "-restore"}
)

// etcFiles are copied from the unpacked packages.
var etcFiles = []string{"etc/protocols", "etc/services", "etc/ethertypes"}

// moduleDirs are kernel module directories included whole (relative to
// /lib/modules/<release>): every netfilter, IPVS, ipset and bridge module,
// so a proxy's or a test's first use of a match never fails for a missing
// module.
var moduleDirs = []string{
	"kernel/net/netfilter/",
	"kernel/net/ipv4/netfilter/",
	"kernel/net/ipv6/netfilter/",
	"kernel/net/bridge/",
}

// bootModules are loaded by the agent at boot, in this order (each after its
// dependencies from modules.dep). crc32c_generic comes first: libcrc32c
// (needed by nf_conntrack, nf_nat, ip_vs) asks the crypto API for "crc32c"
// at init, a soft dependency modules.dep does not list. virtio_pci and
// virtio_console come early: the agent's control channel is a virtio port.
var bootModules = []string{
	"crc32c_generic", "libcrc32c",
	"virtio_pci", "virtio_console", "virtio_net",
	"veth", "dummy", "bridge", "br_netfilter",
	"nfnetlink", "nf_conntrack", "nf_conntrack_netlink", "nf_nat",
	"x_tables", "xt_tcpudp",
	"ip_tables", "iptable_filter", "iptable_nat", "iptable_mangle", "iptable_raw",
	"ip6_tables", "ip6table_filter", "ip6table_nat", "ip6table_mangle", "ip6table_raw",
	"nf_tables", "nft_compat", "nft_chain_nat", "nft_ct", "nft_nat", "nft_masq",
	"nft_reject_inet", "nft_fib_inet", "nft_limit",
	"xt_conntrack", "xt_comment", "xt_mark", "xt_MASQUERADE", "xt_addrtype", "xt_multiport",
	"xt_nat", "xt_statistic", "xt_physdev", "xt_set", "xt_ipvs", "xt_state", "xt_CT",
	"xt_REDIRECT", "xt_recent", "xt_limit", "xt_NFLOG", "xt_LOG", "ipt_REJECT", "ip6t_REJECT",
	"ip_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip",
	"ip_set_hash_ipportnet", "ip_set_hash_net", "ip_set_hash_netport", "ip_set_bitmap_port",
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc", "ip_vs_lblcr",
	"ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq", "ip_vs_fo", "ip_vs_ovf", "ip_vs_mh",
}

// extraModules are included (not loaded at boot) besides moduleDirs and
// bootModules, with their dependencies.
var extraModules = []string{"crc32c_intel", "virtio_rng"}
