package tlsmgr

import (
	"encoding/pem"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeWorkloadAPI is a SPIFFE Workload API server, standing in for a SPIRE
// agent: FetchX509SVID streams the current response and a new one whenever
// set is called. Like SPIRE it refuses calls without the security header
// "workload.spiffe.io: true", which the SPIFFE Workload API standard makes
// every client send, so that a request forged through some other client on
// the host (server-side request forgery) cannot fetch SVIDs.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	mu      sync.Mutex
	resp    *workload.X509SVIDResponse // nil: keep the stream open, send nothing
	changed chan struct{}              // closed and replaced by set

	streams atomic.Int32 // FetchX509SVID streams open now
	refused atomic.Int32 // calls refused for a missing header
}

// startFakeWorkloadAPI serves f on a unix socket in a temporary directory
// and returns the socket's address as SPIFFESocket takes it.
func startFakeWorkloadAPI(t *testing.T, resp *workload.X509SVIDResponse) (*fakeWorkloadAPI, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	f, _ := startFakeWorkloadAPIAt(t, path, resp)
	return f, "unix://" + path
}

// startFakeWorkloadAPIAt serves a fake on the unix socket path; stop ends
// it, its open streams and its socket, as an agent that exits does.
func startFakeWorkloadAPIAt(t *testing.T, path string, resp *workload.X509SVIDResponse) (f *fakeWorkloadAPI, stop func()) {
	t.Helper()
	f = &fakeWorkloadAPI{resp: resp, changed: make(chan struct{})}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return f, srv.Stop
}

// set makes resp the current response and pushes it to every open stream.
func (f *fakeWorkloadAPI) set(resp *workload.X509SVIDResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resp = resp
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		f.refused.Add(1)
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	f.streams.Add(1)
	defer f.streams.Add(-1)
	for range 1000 { // bounded: no test pushes that many updates
		f.mu.Lock()
		resp, changed := f.resp, f.changed
		f.mu.Unlock()
		if resp != nil {
			// A clone per send: marshalling writes the message's size cache,
			// and several streams may send the same response.
			if err := stream.Send(proto.Clone(resp).(*workload.X509SVIDResponse)); err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
	return status.Error(codes.ResourceExhausted, "fake workload api: too many updates")
}

// svidEntry mints an SVID for id with ca and returns it as the Workload API
// carries it: the chain and the PKCS#8 key in DER, and the CA as bundle.
func svidEntry(t *testing.T, ca *CA, id string) *workload.X509SVID {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(id, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := pem.Decode(certPEM)
	key, _ := pem.Decode(keyPEM)
	if cert == nil || key == nil {
		t.Fatal("Issue returned no PEM")
	}
	return &workload.X509SVID{SpiffeId: id, X509Svid: cert.Bytes, X509SvidKey: key.Bytes, Bundle: ca.Cert.Raw}
}

func x509Response(entries ...*workload.X509SVID) *workload.X509SVIDResponse {
	return &workload.X509SVIDResponse{Svids: entries}
}
