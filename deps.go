//go:build tools

// Package main pins the third-party libraries meshd's leaves use, so that
// go.mod and go.sum carry them before the code that imports them lands.
package main

import (
	_ "github.com/caddyserver/certmagic"
	_ "github.com/dgraph-io/ristretto/v2"
	_ "github.com/hashicorp/memberlist"
	_ "github.com/osrg/gobgp/v4/api"
	_ "github.com/osrg/gobgp/v4/pkg/server"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/quic-go/quic-go/http3"
	_ "github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	_ "github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	_ "github.com/spiffe/go-spiffe/v2/svid/x509svid"
	_ "github.com/spiffe/go-spiffe/v2/workloadapi"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/net/http2"
)
