package agentapi

import (
	"context"
	"fmt"
	"io"
	"net/rpc"
	"net/rpc/jsonrpc"
	"strings"
	"time"
)

// Client calls the agent. Calls may run concurrently.
type Client struct {
	rpc *rpc.Client
}

// NewClient speaks the protocol over conn (the qemu chardev socket).
func NewClient(conn io.ReadWriteCloser) *Client {
	return &Client{rpc: jsonrpc.NewClient(conn)}
}

// Close closes the connection.
func (c *Client) Close() error { return c.rpc.Close() }

// Call invokes Agent.<method>, giving up when ctx ends (the call itself
// may still complete in the guest).
func (c *Client) Call(ctx context.Context, method string, args, reply any) error {
	call := c.rpc.Go(Service+"."+method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		if call.Error != nil {
			return fmt.Errorf("agent %s: %w", method, call.Error)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent %s: %w", method, ctx.Err())
	}
}

// Ping asks the agent for its kernel and uptime.
func (c *Client) Ping(ctx context.Context) (PingReply, error) {
	var r PingReply
	return r, c.Call(ctx, "Ping", Empty{}, &r)
}

// Exec runs a command to completion. A non-zero exit is an error carrying
// the output; the reply is returned either way.
func (c *Client) Exec(ctx context.Context, args ExecArgs) (ExecReply, error) {
	var r ExecReply
	if args.Timeout == 0 {
		args.Timeout = 60 * time.Second
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < args.Timeout {
		args.Timeout = time.Until(dl)
	}
	if err := c.Call(ctx, "Exec", args, &r); err != nil {
		return r, err
	}
	if r.Err != "" || r.ExitCode != 0 {
		where := ""
		if args.NetNS != "" {
			where = " (netns " + args.NetNS + ")"
		}
		return r, fmt.Errorf("guest%s: %s: exit %d %s: %s", where, strings.Join(args.Argv, " "), r.ExitCode, r.Err, strings.TrimSpace(r.Output))
	}
	return r, nil
}

// Start starts a named long-running process.
func (c *Client) Start(ctx context.Context, args StartArgs) (StartReply, error) {
	var r StartReply
	return r, c.Call(ctx, "Start", args, &r)
}

// Stop stops a named process (no error if it is not running).
func (c *Client) Stop(ctx context.Context, args StopArgs) (ProcStatus, error) {
	var r ProcStatus
	return r, c.Call(ctx, "Stop", args, &r)
}

// Status reports on a named process.
func (c *Client) Status(ctx context.Context, name string) (ProcStatus, error) {
	var r ProcStatus
	return r, c.Call(ctx, "Status", ProcArgs{Name: name}, &r)
}

// ReadFile reads a guest file.
func (c *Client) ReadFile(ctx context.Context, path string) ([]byte, error) {
	var r FileReply
	err := c.Call(ctx, "ReadFile", FileArgs{Path: path}, &r)
	return r.Data, err
}

// WriteFile writes a guest file (creating parent directories).
func (c *Client) WriteFile(ctx context.Context, path string, data []byte, mode uint32) error {
	return c.Call(ctx, "WriteFile", FileArgs{Path: path, Data: data, Mode: mode}, &Empty{})
}

// Query sends one echo query from a guest namespace.
func (c *Client) Query(ctx context.Context, args QueryArgs) (QueryReply, error) {
	var r QueryReply
	return r, c.Call(ctx, "Query", args, &r)
}

// QueryMany sends Count echo queries from a guest namespace.
func (c *Client) QueryMany(ctx context.Context, args QueryManyArgs) (QueryManyReply, error) {
	var r QueryManyReply
	return r, c.Call(ctx, "QueryMany", args, &r)
}

// ConnOpen opens a long-lived TCP connection to an echo server.
func (c *Client) ConnOpen(ctx context.Context, args ConnOpenArgs) (ConnOpenReply, error) {
	var r ConnOpenReply
	return r, c.Call(ctx, "ConnOpen", args, &r)
}

// ConnEcho round-trips a line on an open connection.
func (c *Client) ConnEcho(ctx context.Context, args ConnEchoArgs) (ConnEchoReply, error) {
	var r ConnEchoReply
	return r, c.Call(ctx, "ConnEcho", args, &r)
}

// ConnClose closes an open connection.
func (c *Client) ConnClose(ctx context.Context, id int) error {
	return c.Call(ctx, "ConnClose", ConnArgs{ID: id}, &Empty{})
}

// HTTPGet fetches a URL from a guest namespace.
func (c *Client) HTTPGet(ctx context.Context, args HTTPGetArgs) (HTTPGetReply, error) {
	var r HTTPGetReply
	return r, c.Call(ctx, "HTTPGet", args, &r)
}
