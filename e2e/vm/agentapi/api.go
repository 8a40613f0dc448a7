// Package agentapi is the protocol between the e2e harness (host) and the
// agent inside the IPVS test VM: JSON-RPC 1.0 (net/rpc/jsonrpc) over a
// virtio-serial port that qemu connects to a unix socket in the test's
// temporary directory. No network is involved, so the control channel
// works before, during and after the guest's network is set up, and
// nothing listens anywhere.
//
// The agent (e2e/vm/agent) serves Service; Client (host side) wraps the
// calls with contexts.
package agentapi

import (
	"time"

	"github.com/kpr-proxy/kpr/e2e/echo"
)

// PortName is the virtio-serial port's name (qemu: virtserialport,name=…;
// guest: /sys/class/virtio-ports/*/name).
const PortName = "org.kpr.agent.0"

// Service is the RPC receiver name.
const Service = "Agent"

// Guest paths the image builder and the agent agree on.
const (
	// BootModulesFile lists the modules the agent loads at boot, one per
	// line, in order.
	BootModulesFile = "/etc/kpr-vm/modules"
	// BinDir holds the per-run overlay's programs (proxy, echo); it is
	// first in every guest process's PATH.
	BinDir = "/opt/kpr/bin"
	// LogDir holds the logs of processes the agent starts (<name>.log).
	LogDir = "/var/log/kpr"
)

// Empty is an argument or reply with nothing in it.
type Empty struct{}

// PingReply tells who answered.
type PingReply struct {
	// Kernel is the guest's `uname -r`.
	Kernel string
	// Uptime is the guest's uptime (from /proc/uptime).
	Uptime time.Duration
	// BootLog is what the agent did at boot (module loading and timings).
	BootLog []string
}

// ExecArgs runs a command to completion.
type ExecArgs struct {
	// Argv is the program and its arguments; Argv[0] is looked up in PATH.
	Argv []string
	// NetNS, if set, runs it inside that named network namespace
	// (`ip netns exec`).
	NetNS string
	// Env is added to the agent's environment.
	Env []string
	// Stdin is fed to the command.
	Stdin string
	// Timeout bounds the run (default 60s); the command is killed after.
	Timeout time.Duration
}

// ExecReply is the command's combined output and exit code.
type ExecReply struct {
	Output   string
	ExitCode int
	// Err is set when the command could not start or was killed.
	Err string
}

// StartArgs starts a long-running process under a name.
type StartArgs struct {
	// Name identifies the process (and its log /var/log/<Name>.log).
	Name  string
	Argv  []string
	NetNS string
	Env   []string
}

// StartReply says which pid the process got.
type StartReply struct {
	Pid int
}

// StopArgs stops a named process: SIGTERM, then SIGKILL after Grace.
type StopArgs struct {
	Name  string
	Grace time.Duration
}

// ProcArgs names a process.
type ProcArgs struct {
	Name string
}

// ProcStatus is a named process's state.
type ProcStatus struct {
	Running bool
	Pid     int
	// Exit describes how the last run ended ("" while running).
	Exit string
	// LogPath is its log in the guest.
	LogPath string
	// Starts counts starts under this name.
	Starts int
}

// FileArgs reads or writes a guest file.
type FileArgs struct {
	Path string
	Data []byte
	Mode uint32
}

// FileReply is a file's content.
type FileReply struct {
	Data []byte
}

// QueryArgs is one echo query (see e2e/echo) from a guest namespace.
type QueryArgs struct {
	// NetNS is the client's namespace ("" for the VM's root namespace).
	NetNS string
	// Proto is tcp, udp or http; Addr host:port.
	Proto, Addr string
	Timeout     time.Duration
}

// QueryReply carries the echo server's answer.
type QueryReply struct {
	Reply echo.Reply
}

// QueryManyArgs sends Count sequential queries (one new connection or
// socket each) and reports every answer: load-balancing checks without a
// round trip over the control channel per query.
type QueryManyArgs struct {
	QueryArgs
	Count int
}

// QueryManyReply lists the answers (Pod names) and errors in order: entry
// i is either Replies[i].Pod != "" or Errors[i] != "".
type QueryManyReply struct {
	Replies []echo.Reply
	Errors  []string
}

// ConnOpenArgs opens a long-lived TCP connection to an echo server.
type ConnOpenArgs struct {
	NetNS   string
	Addr    string
	Timeout time.Duration
}

// ConnOpenReply identifies the connection and carries the server's
// greeting (which pod answered).
type ConnOpenReply struct {
	ID    int
	Hello echo.Reply
	// Local is the client side's address (ip:port).
	Local string
}

// ConnEchoArgs sends Data (one line) on connection ID and waits for it to
// come back.
type ConnEchoArgs struct {
	ID      int
	Data    string
	Timeout time.Duration
}

// ConnEchoReply is what came back.
type ConnEchoReply struct {
	Data string
}

// ConnArgs names a connection.
type ConnArgs struct {
	ID int
}

// HTTPGetArgs fetches a URL from a guest namespace.
type HTTPGetArgs struct {
	NetNS   string
	URL     string
	Timeout time.Duration
}

// HTTPGetReply is the response.
type HTTPGetReply struct {
	Status int
	Body   string
}
