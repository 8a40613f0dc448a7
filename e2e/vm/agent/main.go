// Command agent runs inside the IPVS test VM as its /init. It mounts the
// kernel filesystems, loads the network modules in dependency order, then
// serves the harness over a virtio-serial port (see e2e/vm/agentapi):
// running commands and processes in the guest's network namespaces, echo
// queries and long-lived connections from them, file reads and writes.
//
// The same binary has a host-side mode, `agent relay HOST:PORT`: qemu's
// user networking runs it for each guest connection to the guestfwd
// address (guestfwd=…-cmd:agent relay …), and it splices its stdin/stdout
// to HOST:PORT — the apiserver, dialled from the namespace qemu runs in.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "relay" {
		os.Exit(relay(os.Args[2]))
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "usage: agent (as the VM's /init) | agent relay HOST:PORT")
		os.Exit(2)
	}
	runInit()
}

// relay copies stdin to a TCP connection to addr and the connection to
// stdout, until either side closes.
func relay(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent relay:", err)
		return 1
	}
	go func() {
		// Guest closed: pass the half-close on; the server then closes.
		_, _ = io.Copy(c, os.Stdin)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, _ = io.Copy(os.Stdout, c)
	c.Close()
	return 0
}

// logf writes a timestamped line to the console (the serial log).
func logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stdout, "kpr-agent %s %s\n", time.Now().UTC().Format("15:04:05.000"), strings.TrimRight(msg, "\n"))
}
