// Package echo is the e2e workload protocol: a server that answers every
// client with the pod name and the client address it saw, and the matching
// client. The server runs in pod network namespaces (cmd/echo); the client is
// used by tests directly (with a namespace-aware dialer) or through cmd/echo.
package echo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Reply is what the server tells each client.
type Reply struct {
	// Pod is the server's configured name (the pod name).
	Pod string `json:"pod"`
	// Client is the remote address the server saw (ip:port): the client's own
	// address when the source is preserved, a node address when masqueraded.
	Client string `json:"client"`
	// Local is the server-side address of the connection (pod IP:port).
	Local string `json:"local"`
	// Proto is tcp, udp or http.
	Proto string `json:"proto"`
}

// ClientIP is the IP part of Client.
func (r Reply) ClientIP() string {
	h, _, err := net.SplitHostPort(r.Client)
	if err != nil {
		return r.Client
	}
	return h
}

func (r Reply) String() string {
	b, _ := json.Marshal(r)
	return string(b)
}

// ServerConfig says where to listen. Empty addresses disable a protocol.
type ServerConfig struct {
	Name string
	TCP  string
	UDP  string
	HTTP string
}

// Server holds bound listeners; Serve runs them.
type Server struct {
	cfg  ServerConfig
	tcp  net.Listener
	udp  net.PacketConn
	http net.Listener
}

// Listen binds every configured listener, so that once it returns clients can
// connect (the harness marks a pod Ready only after this).
func Listen(cfg ServerConfig) (*Server, error) {
	if cfg.TCP == "" && cfg.UDP == "" && cfg.HTTP == "" {
		return nil, errors.New("no listener configured")
	}
	s := &Server{cfg: cfg}
	var err error
	if cfg.TCP != "" {
		if s.tcp, err = net.Listen("tcp", cfg.TCP); err != nil {
			return nil, err
		}
	}
	if cfg.UDP != "" {
		if s.udp, err = net.ListenPacket("udp", cfg.UDP); err != nil {
			s.Close()
			return nil, err
		}
	}
	if cfg.HTTP != "" {
		if s.http, err = net.Listen("tcp", cfg.HTTP); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close releases all listeners.
func (s *Server) Close() {
	// Nil interface fields stay nil when converted to io.Closer.
	for _, c := range []io.Closer{s.tcp, s.udp, s.http} {
		if c != nil {
			_ = c.Close()
		}
	}
}

// Serve answers clients until ctx ends.
func (s *Server) Serve(ctx context.Context) {
	var wg sync.WaitGroup
	if s.tcp != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.serveTCP() }()
	}
	if s.udp != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.serveUDP() }()
	}
	if s.http != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = http.Serve(s.http, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				local := ""
				if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
					local = a.String()
				}
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintln(w, Reply{Pod: s.cfg.Name, Client: r.RemoteAddr, Local: local, Proto: "http"}.String())
			}))
		}()
	}
	<-ctx.Done()
	s.Close()
	wg.Wait()
}

func (s *Server) serveTCP() {
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := Reply{Pod: s.cfg.Name, Client: c.RemoteAddr().String(), Local: c.LocalAddr().String(), Proto: "tcp"}
			if _, err := io.WriteString(c, r.String()+"\n"); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		}()
	}
}

func (s *Server) serveUDP() {
	buf := make([]byte, 64<<10)
	for {
		_, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		r := Reply{Pod: s.cfg.Name, Client: from.String(), Local: s.udp.LocalAddr().String(), Proto: "udp"}
		_, _ = s.udp.WriteTo([]byte(r.String()+"\n"), from)
	}
}

// Dialer opens connections; the framework passes one that dials from inside a
// network namespace. nil means a plain net.Dialer.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Query asks the server at addr (host:port) over proto (tcp, udp or http)
// who it is. It honours ctx's deadline; UDP retries its datagram every 200ms
// until then, as a datagram may be dropped while rules are being programmed.
func Query(ctx context.Context, d Dialer, proto, addr string) (Reply, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	switch proto {
	case "tcp":
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return Reply{}, err
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		return readReply(bufio.NewReader(c))
	case "udp":
		c, err := d.DialContext(ctx, "udp", addr)
		if err != nil {
			return Reply{}, err
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write([]byte("who\n")); err != nil {
				return Reply{}, err
			}
			next := time.Now().Add(200 * time.Millisecond)
			if next.After(deadline) {
				next = deadline
			}
			_ = c.SetReadDeadline(next)
			n, err := c.Read(buf)
			if err == nil {
				var r Reply
				if err := json.Unmarshal(buf[:n], &r); err != nil {
					return Reply{}, fmt.Errorf("bad reply %q: %w", buf[:n], err)
				}
				return r, nil
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !time.Now().Before(deadline) {
				return Reply{}, err
			}
		}
	case "http":
		tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
		if err != nil {
			return Reply{}, err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return Reply{}, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return Reply{}, fmt.Errorf("http status %s", resp.Status)
		}
		return readReply(bufio.NewReader(resp.Body))
	}
	return Reply{}, fmt.Errorf("unknown protocol %q (want tcp, udp or http)", proto)
}

func readReply(r *bufio.Reader) (Reply, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return Reply{}, fmt.Errorf("reading reply: %w", err)
	}
	var rep Reply
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &rep); err != nil {
		return Reply{}, fmt.Errorf("bad reply %q: %w", line, err)
	}
	return rep, nil
}
