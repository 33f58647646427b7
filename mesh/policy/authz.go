package policy

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Authorization says which callers may call a service, by the caller's
// SPIFFE ID (the end-to-end caller the mesh vouches for), the request's
// path and method:
//
//	authorization:
//	  default: deny              # allow (the default) or deny
//	  rules:                     # the first rule that matches decides
//	    - name: api-reads
//	      callers: [service/api] # exact, service/* (a prefix), edge (the public), *
//	      match: {path-prefix: /api, methods: [GET, HEAD]}
//	      action: allow          # the default action of a rule
//	    - callers: [service/*]
//	      match: {path-prefix: /admin}
//	      action: deny
//
// Callers are written as the SPIFFE ID's path under the trust domain
// (service/api, gateway/eu/gw-1) or as a whole spiffe:// ID; "edge" is any
// edge, the hop public traffic comes through. A rule without callers is
// for every caller, one without match for every request. Headers are not
// matched: they are the caller's to set.
type Authorization struct {
	// Deny is true when requests that no rule matches are refused.
	Deny  bool
	Rules []*AuthzRule
}

// AuthzRule is one rule of an Authorization.
type AuthzRule struct {
	Name    string // as written, else its index ("0", "1", …)
	Deny    bool   // the rule's action
	callers []callerPattern
	match   matcher
}

type callerPattern struct {
	s      string // a path under the trust domain, or a whole ID when full
	prefix bool   // s ends in / and matches everything under it
	full   bool
	any    bool
}

const maxAuthzRules = 100

// Allowed decides a request of caller (a whole SPIFFE ID, "" when
// unknown) in trust domain td with method and path. It returns the rule
// that decided, "default" when none matched. It allocates nothing.
func (a *Authorization) Allowed(caller, td, method, path string) (ok bool, rule string) {
	if a == nil {
		return true, DefaultRouteName
	}
	sub, inTD := strings.CutPrefix(caller, "spiffe://"+td+"/")
	if td == "" {
		inTD = false
	}
	for _, r := range a.Rules {
		if !r.callerMatches(caller, sub, inTD) || !r.match.matches(method, path, nil) {
			continue
		}
		return !r.Deny, r.Name
	}
	return !a.Deny, DefaultRouteName
}

func (r *AuthzRule) callerMatches(caller, sub string, inTD bool) bool {
	if len(r.callers) == 0 {
		return true
	}
	for _, c := range r.callers {
		switch {
		case c.any:
			return true
		case c.full:
			if caller == c.s {
				return true
			}
		case !inTD:
		case c.prefix:
			if strings.HasPrefix(sub, c.s) {
				return true
			}
		case sub == c.s:
			return true
		}
	}
	return false
}

func (p *parser) authorization(n *yaml.Node, path string) *Authorization {
	a := &Authorization{}
	for _, e := range p.mapping(n, path, "default", "rules") {
		switch e.name {
		case "default":
			a.Deny = p.action(e.val, e.path)
		case "rules":
			names := map[string]int{}
			for i, rn := range p.list(e.val, e.path, maxAuthzRules) {
				rp := fmt.Sprintf("%s[%d]", e.path, i)
				r := &AuthzRule{Name: fmt.Sprint(i)}
				for _, f := range p.mapping(rn, rp, "name", "callers", "match", "action") {
					switch f.name {
					case "name":
						r.Name = p.label(f.val, f.path, "rule name", p.str(f.val, f.path))
						if r.Name == DefaultRouteName {
							p.failf(f.val, f.path, "rule name %q is reserved for requests no rule matches", DefaultRouteName)
						}
					case "callers":
						cs := p.list(f.val, f.path, 64)
						if len(cs) == 0 {
							p.failf(f.val, f.path, "want at least one caller (leave callers out for every caller)")
						}
						for j, cn := range cs {
							cp := fmt.Sprintf("%s[%d]", f.path, j)
							r.callers = append(r.callers, p.caller(cn, cp))
						}
					case "match":
						for _, m := range p.mapping(f.val, f.path) {
							if m.name == "headers" {
								p.failf(m.key, m.path, "authorization matches path and method, not headers: a caller sets its own headers")
							}
						}
						r.match = p.match(f.val, f.path)
					case "action":
						r.Deny = p.action(f.val, f.path)
					}
				}
				if j, dup := names[r.Name]; dup {
					p.failf(rn, rp, "rule name %q is already the name of rules[%d]", r.Name, j)
				}
				names[r.Name] = i
				a.Rules = append(a.Rules, r)
			}
		}
	}
	return a
}

// action reads allow or deny; true for deny.
func (p *parser) action(n *yaml.Node, path string) bool {
	switch s := p.str(n, path); s {
	case "allow":
		return false
	case "deny":
		return true
	default:
		p.failf(n, path, "unknown action %q (want allow or deny)", s)
		return false
	}
}

func (p *parser) caller(n *yaml.Node, path string) callerPattern {
	s := p.str(n, path)
	switch {
	case s == "*":
		return callerPattern{any: true}
	case s == "edge":
		return callerPattern{s: "edge/", prefix: true}
	case strings.HasPrefix(s, "spiffe://"):
		if len(s) > 2048 || strings.ContainsAny(s, " *?#") || !strings.Contains(s[len("spiffe://"):], "/") {
			p.failf(n, path, "caller %q is not a SPIFFE ID (spiffe://TRUST-DOMAIN/PATH, no wildcard)", s)
		}
		return callerPattern{s: s, full: true}
	}
	c := callerPattern{s: s}
	if rest, ok := strings.CutSuffix(s, "/*"); ok {
		c.s, c.prefix = rest+"/", true
	}
	segs := strings.Split(strings.TrimSuffix(c.s, "/"), "/")
	for _, seg := range segs {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, " *?#%") || len(s) > 1024 {
			p.failf(n, path, "caller %q is not a path under the trust domain (service/api, service/*, edge, *)", s)
		}
	}
	return c
}
