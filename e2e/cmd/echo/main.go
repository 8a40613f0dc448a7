// Command echo is the e2e test workload: a tiny server that tells each client
// which pod answered and which client address it saw, so tests can check load
// balancing, session affinity and source-IP preservation through a proxy.
//
//	echo serve  --name=POD [--tcp=:8080] [--udp=:8080] [--http=:8081] [--ready-file=PATH]
//	echo dial   --proto=tcp|udp|http --addr=HOST:PORT [--timeout=2s]
//
// TCP: on accept the server writes one JSON line (see Reply), then echoes
// whatever the client sends until EOF. UDP: every datagram is answered with one
// JSON Reply. HTTP: any request is answered with a JSON Reply body.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kpr-proxy/kpr/e2e/echo"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "dial":
		dial(os.Args[2:])
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: echo serve --name=POD [--tcp=:8080] [--udp=:8080] [--http=:8081] [--ready-file=PATH]\n       echo dial --proto=tcp|udp|http --addr=HOST:PORT [--timeout=2s]")
	os.Exit(2)
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var cfg echo.ServerConfig
	fs.StringVar(&cfg.Name, "name", "", "name reported to clients (the pod name)")
	fs.StringVar(&cfg.TCP, "tcp", ":8080", "TCP listen address; empty disables")
	fs.StringVar(&cfg.UDP, "udp", ":8080", "UDP listen address; empty disables")
	fs.StringVar(&cfg.HTTP, "http", "", "HTTP listen address; empty disables")
	readyFile := fs.String("ready-file", "", "file written once all listeners are bound")
	_ = fs.Parse(args)
	if cfg.Name == "" {
		h, _ := os.Hostname()
		cfg.Name = h
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := echo.Listen(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte("ready\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "echo: ready file:", err)
			os.Exit(1)
		}
	}
	fmt.Fprintf(os.Stderr, "echo: %s serving tcp=%q udp=%q http=%q\n", cfg.Name, cfg.TCP, cfg.UDP, cfg.HTTP)
	srv.Serve(ctx)
}

func dial(args []string) {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	proto := fs.String("proto", "tcp", "tcp, udp or http")
	addr := fs.String("addr", "", "HOST:PORT to dial")
	timeout := fs.Duration("timeout", 2*time.Second, "overall timeout")
	_ = fs.Parse(args)
	if *addr == "" {
		usage()
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	r, err := echo.Query(ctx, nil, *proto, *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	fmt.Println(r.String())
}
