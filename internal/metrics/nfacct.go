package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// nfacct counter names the iptables rules must use (-m nfacct --nfacct-name
// NAME) for the packet-count metrics below; the same names as kube-proxy, so
// counters survive a switch between the two.
const (
	CTStateInvalidDroppedNFAcctCounter     = "ct_state_invalid_dropped_pkts"
	LocalhostNodePortAcceptedNFAcctCounter = "localhost_nps_accepted_pkts"
)

// NFAcctReader reads the packet count of a named nfacct (netfilter extended
// accounting) counter. It is the kernel boundary: the real implementation
// talks netlink and lives with the iptables code.
type NFAcctReader interface {
	Packets(counter string) (uint64, error)
}

// RegisterNFAcct adds kube-proxy's two nfacct-backed counters
// (kubeproxy_iptables_ct_state_invalid_dropped_packets_total and
// kubeproxy_iptables_localhost_nodeports_accepted_packets_total), read from r
// at scrape time. Call it in iptables mode once nfacct is known to work. A
// counter that cannot be read is logged and left out of that scrape, as
// kube-proxy does.
func (m *Metrics) RegisterNFAcct(r NFAcctReader, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	for _, c := range []*nfacctCollector{
		{
			reader:  r,
			log:     log,
			counter: CTStateInvalidDroppedNFAcctCounter,
			desc: prometheus.NewDesc("kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
				alpha("packets dropped by iptables to work around conntrack problems"), nil, nil),
		},
		{
			reader:  r,
			log:     log,
			counter: LocalhostNodePortAcceptedNFAcctCounter,
			desc: prometheus.NewDesc("kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
				alpha("Number of packets accepted on nodeports of loopback interface"), nil, nil),
		},
	} {
		if err := m.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

type nfacctCollector struct {
	reader  NFAcctReader
	log     *zap.Logger
	counter string
	desc    *prometheus.Desc
}

func (c *nfacctCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *nfacctCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := c.reader.Packets(c.counter)
	if err != nil {
		c.log.Error("failed to read nfacct counter", zap.String("counter", c.counter), zap.Error(err))
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n))
}
