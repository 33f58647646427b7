package mesh

import (
	"context"
	"net"
	"net/http"
	"time"
)

// healthClient checks the app: short timeouts, no keep-alive, so a check
// measures the app's ability to accept a new connection.
var healthClient = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// healthClientH2C is healthClient for an app that speaks HTTP/2 without
// TLS (Config.UpstreamProtocol h2c).
var healthClientH2C = &http.Client{
	Timeout:       2 * time.Second,
	Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil, Protocols: h2cOnly()},
	CheckRedirect: healthClient.CheckRedirect,
}

func h2cOnly() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// checkApp runs one health check of the sidecar's app: an HTTP GET of
// HealthPath (2xx or 3xx is healthy) or, without one, a TCP connect: to
// the app's HTTP address, or for an app without one (TCP ports only) to its
// first TCP port; an app with UDP ports only is not checked.
func (n *Node) checkApp(ctx context.Context) bool {
	c := n.running()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if c.HealthPath == "" || c.Upstream == "" {
		addr := c.Upstream
		if addr == "" {
			for _, p := range c.AppPorts() {
				if p.Proto == "tcp" {
					addr = p.Addr
					break
				}
			}
		}
		if addr == "" {
			// UDP ports only: UDP has no handshake to check without
			// speaking the app's protocol; the app counts as up.
			return true
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Upstream+c.HealthPath, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "meshd-health")
	client := healthClient
	if c.UpstreamProtocol == UpstreamH2C {
		client = healthClientH2C
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

// healthLoop checks the app every HealthInterval. One failure marks it
// unhealthy at once (a dead app should stop getting traffic now); one
// success marks it healthy again. Each change is published to the region
// pool, and through the gateway's summary to the global pool.
func (n *Node) healthLoop(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.Config.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok := n.checkApp(ctx)
		if ok != n.healthy.Load() {
			n.healthy.Store(ok)
			n.Logger.Info("app health changed", "healthy", ok, "upstream", n.running().Upstream)
			n.publish()
		}
	}
}
