package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pki is what the control plane's TLS and authentication need, written to
// files in dir: a CA, the API server's serving certificate, the service
// account signing key and a static token per client.
type pki struct {
	dir    string
	CA     string // ca.crt
	caPEM  []byte
	Cert   string // apiserver.crt
	Key    string // apiserver.key
	SAKey  string // sa.key (private, signs)
	SAPub  string // sa.pub
	Tokens string // tokens.csv
	// tokens maps a client ("admin", "kube-proxy", "coredns") to its token.
	tokens map[string]string
}

// clients are the static-token users: name, user, groups.
var clients = [][3]string{
	{"admin", "admin", "system:masters"},
	// The default RBAC binds system:node-proxier to this user.
	{"kube-proxy", "system:kube-proxy", ""},
	// Bound to CoreDNS's ClusterRole by the harness, as CoreDNS's manifest does.
	{"coredns", "system:serviceaccount:kube-system:coredns", "system:serviceaccounts"},
}

func newPKI(dir string, sans []net.IP, dnsNames []string) (*pki, error) {
	p := &pki{
		dir: dir, CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "apiserver.crt"), Key: filepath.Join(dir, "apiserver.key"),
		SAKey: filepath.Join(dir, "sa.key"), SAPub: filepath.Join(dir, "sa.pub"), Tokens: filepath.Join(dir, "tokens.csv"),
		tokens: map[string]string{},
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node-local-coredns test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("creating the CA: %w", err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: sans, DNSNames: dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("creating the API server's certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		p.CA:   p.caPEM,
		p.Cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}
	if files[p.Key], err = ecKeyPEM(key); err != nil {
		return nil, err
	}
	if files[p.SAKey], err = ecKeyPEM(saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	files[p.SAPub] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	var csv strings.Builder
	for i, c := range clients {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		tok := hex.EncodeToString(b)
		p.tokens[c[0]] = tok
		fmt.Fprintf(&csv, "%s,%s,%d", tok, c[1], 1000+i)
		if c[2] != "" {
			fmt.Fprintf(&csv, ",%q", c[2])
		}
		csv.WriteString("\n")
	}
	files[p.Tokens] = []byte(csv.String())
	for name, b := range files {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func ecKeyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// kubeconfig writes a kubeconfig for client that reaches server, and
// returns its path.
func (p *pki) kubeconfig(client, server string) (string, error) {
	path := filepath.Join(p.dir, client+".kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: %s
current-context: test
`, server, p.CA, client, p.tokens[client], client)
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}
