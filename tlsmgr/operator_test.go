package tlsmgr

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"path/filepath"
	"testing"
	"time"
)

// The operator key chains to the mesh's root, names an operator, and cannot
// authenticate a TLS connection.
func TestOperatorKey(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir, "mesh.test"); err != nil {
		t.Fatal(err)
	}
	if err := WriteOperator(dir, DefaultOperator); err != nil {
		t.Fatal(err)
	}
	if err := WriteOperator(dir, DefaultOperator); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second WriteOperator = %v, want ErrExist", err)
	}
	op, err := LoadOperator(filepath.Join(dir, OperatorCertFile), filepath.Join(dir, OperatorKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if op.ID != "spiffe://mesh.test/operator/admin" {
		t.Errorf("ID = %s", op.ID)
	}
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := op.Chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("operator certificate does not chain to the root: %v", err)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := op.Chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err == nil {
			t.Errorf("operator certificate verifies for TLS usage %v", u)
		}
	}

	// A directory with only the CA mints one for the occasion; one with
	// neither key says what to do.
	dir2 := t.TempDir()
	if err := InitCA(dir2, "mesh.test"); err != nil {
		t.Fatal(err)
	}
	op2, err := OperatorFromCADir(dir2, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(op2.Chain[0].NotAfter); d > 6*time.Minute {
		t.Errorf("minted operator certificate lives %v, want minutes", d)
	}
	op3, err := OperatorFromCADir(dir, time.Minute)
	if err != nil || !op3.Chain[0].Equal(op.Chain[0]) {
		t.Errorf("OperatorFromCADir did not use operator.crt: %v", err)
	}
	if _, err := LoadOperator(filepath.Join(dir, OperatorCertFile), filepath.Join(dir2, "ca.key")); err == nil {
		t.Error("mismatched operator key loaded")
	}
}
