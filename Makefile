# kpr: a drop-in replacement for kube-proxy.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/kpr-proxy/kpr/internal/version.Version=$(VERSION)

.PHONY: all build test test-unit vet clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/proxy ./cmd/proxy
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/podnet ./cmd/podnet

vet:
	$(GO) vet ./...

# Every test. Kernel tests need root; without it they skip and say why.
test: vet
	$(GO) test -count=1 ./...

test-unit:
	$(GO) test -short -count=1 ./...

clean:
	rm -rf $(BIN)
