package mesh

import (
	"net/http"

	"github.com/meshd/meshd/mesh/policy"
	"github.com/meshd/meshd/proxy"
)

// Retries and timeouts of a route. The hop that picks a service's
// instances applies the route's whole call policy: the gateway of the
// instances' region, or the caller's sidecar when the instances are in its
// own region. Every other hop (the edge, a sidecar sending to its
// gateway) applies only the total and idle timeouts, so that a request is
// retried in one place: retries at each of three hops would multiply into 2³
// attempts. The retry budget is per route and per node.
//
// A service the policy does not name, or a mesh without a policy, keeps
// meshd's built-in behaviour: a request moves to the next candidate after
// a connect failure (at most 3 tries), an instance unreachable 3 times in
// a row is ejected for 10 s.

// routeCalls are the call policies of one route.
type routeCalls struct {
	full     *proxy.CallPolicy // at the hop that picks instances
	deadline *proxy.CallPolicy // elsewhere: the total and idle timeouts only; nil without either
}

var retryOnBits = [...]struct {
	from policy.RetryOn
	to   proxy.RetryOn
}{
	{policy.RetryConnectFailure, proxy.RetryConnectFailure},
	{policy.RetryRefusedStream, proxy.RetryRefusedStream},
	{policy.Retry502, proxy.Retry502},
	{policy.Retry503, proxy.Retry503},
	{policy.Retry504, proxy.Retry504},
	{policy.RetryTimeout, proxy.RetryTimeout},
}

func compileCalls(r *policy.Route) *routeCalls {
	rt := r.Retries
	var on proxy.RetryOn
	for _, b := range retryOnBits {
		if rt.On&b.from != 0 {
			on |= b.to
		}
	}
	full := &proxy.CallPolicy{
		Attempts:         max(rt.Attempts, 1),
		RetryOn:          on,
		BackoffBase:      rt.BackoffBase,
		BackoffMax:       rt.BackoffMax,
		ReplayBody:       rt.ReplayBody,
		ConnectTimeout:   r.Timeouts.Connect,
		FirstByteTimeout: r.Timeouts.FirstByte,
		TotalTimeout:     r.Timeouts.Total,
		IdleTimeout:      r.Timeouts.Idle,
		Outlier: &proxy.OutlierPolicy{
			ConsecutiveFailures: r.Outlier.ConsecutiveFailures,
			Ejection:            r.Outlier.Ejection,
			MaxEjected:          r.Outlier.MaxEjected,
		},
	}
	if rt.Attempts > 1 && rt.Budget > 0 {
		full.Budget = proxy.NewRetryBudget(rt.Budget, rt.MinPerSecond)
	}
	c := &routeCalls{full: full}
	if r.Timeouts.Total > 0 || r.Timeouts.Idle > 0 {
		c.deadline = &proxy.CallPolicy{TotalTimeout: r.Timeouts.Total, IdleTimeout: r.Timeouts.Idle}
	}
	return c
}

// instancePolicy is the Policy of a handler that picks instances (a
// gateway's mesh listener).
func instancePolicy(r *http.Request) *proxy.CallPolicy {
	if rr := routeFrom(r.Context()); rr != nil && rr.calls != nil {
		return rr.calls.full
	}
	return nil
}

// deadlinePolicy is the Policy of a handler that sends to other regions'
// gateways (the edge).
func deadlinePolicy(r *http.Request) *proxy.CallPolicy {
	if rr := routeFrom(r.Context()); rr != nil && rr.calls != nil {
		return rr.calls.deadline
	}
	return nil
}

// outboundPolicy is the Policy of a sidecar's outbound listener: the
// whole policy when the service has instances in the region (the sidecar
// picks one), the deadline only when the call goes through the gateway.
func (n *Node) outboundPolicy(r *http.Request) *proxy.CallPolicy {
	rr := routeFrom(r.Context())
	if rr == nil || rr.calls == nil {
		return nil
	}
	if n.snap.Load().instancesFor(rr.service, rr.subset) != nil {
		return rr.calls.full
	}
	return rr.calls.deadline
}
