package natsconn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/omicsq/omicsq/internal/logcapture"
)

// startServer runs a plain (non-JetStream) embedded server on loopback; a
// zero port means a random one.
func startServer(t *testing.T, o server.Options) *server.Server {
	t.Helper()
	o.Host = "127.0.0.1"
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	o.NoLog, o.NoSigs = true, true
	ns, err := server.NewServer(&o)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server did not start")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustConnect connects and checks the connection round-trips.
func mustConnect(t *testing.T, o Options) {
	t.Helper()
	nc, err := Connect(ctxTimeout(t, 10*time.Second), o, nil, Hooks{})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// mustReject checks that Connect fails quickly with an error containing
// every want and none of the secrets.
func mustReject(t *testing.T, o Options, want []string, secrets ...string) {
	t.Helper()
	start := time.Now()
	nc, err := Connect(ctxTimeout(t, 20*time.Second), o, nil, Hooks{})
	if err == nil {
		nc.Close()
		t.Fatal("Connect succeeded, want an error")
	}
	t.Logf("rejected after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Connect took %v to fail; a rejection should not wait for the deadline", d)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q leaks a secret", err)
		}
	}
}

func TestUserPassword(t *testing.T) {
	t.Parallel()
	ns := startServer(t, server.Options{Username: "alice", Password: "s3cret-pw"})
	mustConnect(t, Options{URLs: ns.ClientURL(), User: "alice", Password: "s3cret-pw"})
	mustReject(t, Options{URLs: ns.ClientURL(), User: "alice", Password: "wrong-pw"},
		[]string{"rejected the credentials (User/Password)", "authorization violation"}, "wrong-pw")
	mustReject(t, Options{URLs: ns.ClientURL()}, []string{"rejected the credentials (no credentials)"})
}

func TestCredentialsInURLAreRedacted(t *testing.T) {
	t.Parallel()
	ns := startServer(t, server.Options{Username: "alice", Password: "s3cret-pw"})
	port := ns.Addr().(*net.TCPAddr).Port
	mustConnect(t, Options{URLs: fmt.Sprintf("nats://alice:s3cret-pw@127.0.0.1:%d", port)})
	mustReject(t, Options{URLs: fmt.Sprintf("nats://alice:bad-pw@127.0.0.1:%d", port)},
		[]string{"rejected the credentials (the credentials in URLs)", "nats://redacted@127.0.0.1"}, "bad-pw", "alice")
}

func TestToken(t *testing.T) {
	t.Parallel()
	ns := startServer(t, server.Options{Authorization: "tok-123456"})
	mustConnect(t, Options{URLs: ns.ClientURL(), Token: "tok-123456"})
	mustReject(t, Options{URLs: ns.ClientURL(), Token: "tok-wrong"},
		[]string{"rejected the credentials (Token)"}, "tok-wrong")
}

func TestNKey(t *testing.T) {
	t.Parallel()
	seedFile := func(kp nkeys.KeyPair) string {
		seed, err := kp.Seed()
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, "user.nk", seed)
	}
	good, _ := nkeys.CreateUser()
	other, _ := nkeys.CreateUser()
	pub, _ := good.PublicKey()
	ns := startServer(t, server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	mustConnect(t, Options{URLs: ns.ClientURL(), NKeySeedFile: seedFile(good)})
	otherSeed, _ := other.Seed()
	mustReject(t, Options{URLs: ns.ClientURL(), NKeySeedFile: seedFile(other)},
		[]string{"rejected the credentials (NKeySeedFile)"}, string(otherSeed))

	// A file that is not a seed names the option.
	_, err := Connect(t.Context(), Options{URLs: ns.ClientURL(), NKeySeedFile: writeFile(t, "bad.nk", []byte("not a seed"))}, nil, Hooks{})
	if err == nil || !strings.Contains(err.Error(), "NKeySeedFile") {
		t.Errorf("bad seed file: got %v, want an error naming NKeySeedFile", err)
	}
}

// TestCredsFile runs the server in operator mode: operator, account and
// user JWTs, the account served by an in-memory resolver.
func TestCredsFile(t *testing.T) {
	t.Parallel()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	if _, err := oc.Encode(okp); err != nil {
		t.Fatal(err)
	}
	account := func(signer nkeys.KeyPair) (nkeys.KeyPair, string, string) {
		akp, _ := nkeys.CreateAccount()
		apub, _ := akp.PublicKey()
		ajwt, err := jwt.NewAccountClaims(apub).Encode(signer)
		if err != nil {
			t.Fatal(err)
		}
		return akp, apub, ajwt
	}
	creds := func(akp nkeys.KeyPair) (string, string) {
		ukp, _ := nkeys.CreateUser()
		upub, _ := ukp.PublicKey()
		ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := ukp.Seed()
		cfg, err := jwt.FormatUserConfig(ujwt, seed)
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, "user.creds", cfg), string(seed)
	}
	akp, apub, ajwt := account(okp)
	res := &server.MemAccResolver{}
	if err := res.Store(apub, ajwt); err != nil {
		t.Fatal(err)
	}
	ns := startServer(t, server.Options{TrustedOperators: []*jwt.OperatorClaims{oc}, AccountResolver: res})

	good, _ := creds(akp)
	mustConnect(t, Options{URLs: ns.ClientURL(), CredsFile: good, Name: "natsconn-test"})

	// A user of an account the server does not know.
	strangerAcc, _, _ := account(okp)
	bad, seed := creds(strangerAcc)
	mustReject(t, Options{URLs: ns.ClientURL(), CredsFile: bad}, []string{"rejected the credentials (CredsFile)"}, seed)

	for name, data := range map[string][]byte{"empty.creds": nil, "jwt-only.creds": []byte("-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n")} {
		_, err := Connect(t.Context(), Options{URLs: ns.ClientURL(), CredsFile: writeFile(t, name, data)}, nil, Hooks{})
		if err == nil || !strings.Contains(err.Error(), "CredsFile") {
			t.Errorf("%s: got %v, want an error naming CredsFile", name, err)
		}
	}
}

// pki is a throw-away CA with a server and a client certificate.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
}

func newPKI(t *testing.T, name string) pki {
	t.Helper()
	dir := t.TempDir()
	write := func(file, typ string, der []byte) string {
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			DNSNames:     []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(cn+".pem", "CERTIFICATE", der), write(cn+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
	p := pki{caFile: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf(2, "server", x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return p
}

func TestTLS(t *testing.T) {
	t.Parallel()
	good, other := newPKI(t, "good"), newPKI(t, "other")
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: good.serverCert, KeyFile: good.serverKey, CaFile: good.caFile, Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := startServer(t, server.Options{TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 2})
	url := ns.ClientURL()

	mustConnect(t, Options{URLs: url, CAFile: good.caFile, CertFile: good.clientCert, KeyFile: good.clientKey})

	// The server's certificate is not signed by the CA we trust.
	mustReject(t, Options{URLs: url, CAFile: other.caFile, CertFile: good.clientCert, KeyFile: good.clientKey},
		[]string{"TLS with", "server's certificate is not trusted (check CAFile)"})
	// The server does not trust our client certificate.
	mustReject(t, Options{URLs: url, CAFile: good.caFile, CertFile: other.clientCert, KeyFile: other.clientKey},
		[]string{"TLS with", "client certificate (check CertFile/KeyFile)"})
	// No client certificate at all.
	mustReject(t, Options{URLs: url, CAFile: good.caFile}, []string{"client certificate (check CertFile/KeyFile)"})
	// A plain server while TLS options are set.
	plain := startServer(t, server.Options{})
	mustReject(t, Options{URLs: plain.ClientURL(), CAFile: good.caFile}, []string{"does not offer TLS"})
}

func TestOptionErrors(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing")
	notPEM := writeFile(t, "ca.pem", []byte("hello"))
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no urls", Options{}, "URLs must not be empty"},
		{"two methods", Options{URLs: "nats://h:4222", Token: "tok-secret", User: "u", Password: "pw-secret"}, "choose one authentication method, got User/Password, Token"},
		{"user without password", Options{URLs: "nats://h:4222", User: "u"}, "User and Password must be given together"},
		{"password without user", Options{URLs: "nats://h:4222", Password: "pw-secret"}, "User and Password must be given together"},
		{"cert without key", Options{URLs: "nats://h:4222", CertFile: "c.pem"}, "CertFile and KeyFile must be given together"},
		{"missing creds", Options{URLs: "nats://h:4222", CredsFile: missing}, "CredsFile"},
		{"missing seed", Options{URLs: "nats://h:4222", NKeySeedFile: missing}, "NKeySeedFile"},
		{"missing ca", Options{URLs: "nats://h:4222", CAFile: missing}, "CAFile"},
		{"ca not pem", Options{URLs: "nats://h:4222", CAFile: notPEM}, "CAFile " + notPEM + ": no PEM certificate found"},
		{"missing cert", Options{URLs: "nats://h:4222", CertFile: missing, KeyFile: missing}, "CertFile/KeyFile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Connect(t.Context(), tc.o, nil, Hooks{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q leaks a secret", err)
			}
		})
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestWaitsForLateServerAndGivesUpAtDeadline(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)

	_, err := Connect(ctxTimeout(t, 300*time.Millisecond), Options{URLs: url, ReconnectWait: 50 * time.Millisecond}, nil, Hooks{})
	if err == nil || !strings.Contains(err.Error(), "no connection to "+url) || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("no server: got %v, want a deadline error naming the URL", err)
	}

	type result struct {
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := Connect(ctxTimeout(t, 20*time.Second), Options{URLs: url, ReconnectWait: 50 * time.Millisecond}, nil, Hooks{})
		if err == nil {
			err = nc.FlushTimeout(5 * time.Second)
			nc.Close()
		}
		done <- result{err}
	}()
	time.Sleep(200 * time.Millisecond) // let Connect fail a few attempts first
	startServer(t, server.Options{Port: port})
	if r := <-done; r.err != nil {
		t.Fatalf("Connect to a late server: %v", r.err)
	}
}

func TestReconnectHooksAndRedactedLogs(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	opts := server.Options{Port: port, Username: "alice", Password: "s3cret-pw"}
	ns := startServer(t, opts)

	var logs logcapture.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	disconnected, reconnected := make(chan struct{}, 4), make(chan struct{}, 4)
	url := fmt.Sprintf("nats://alice:s3cret-pw@127.0.0.1:%d", port)
	nc, err := Connect(ctxTimeout(t, 10*time.Second), Options{URLs: url, ReconnectWait: 50 * time.Millisecond}, log, Hooks{
		OnDisconnect: func() { disconnected <- struct{}{} },
		OnReconnect:  func() { reconnected <- struct{}{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	ns.Shutdown()
	ns.WaitForShutdown()
	select {
	case <-disconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("OnDisconnect was not called")
	}
	startServer(t, opts)
	select {
	case <-reconnected:
	case <-time.After(20 * time.Second):
		t.Fatal("OnReconnect was not called")
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush after reconnect: %v", err)
	}
	out := logs.String()
	for _, want := range []string{"nats connected", "nats disconnected", "nats reconnected", "redacted@127.0.0.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret-pw") || strings.Contains(out, "alice") {
		t.Errorf("logs leak the URL credentials:\n%s", out)
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://u:p@h:4222, tls://tok@h2:4443", "nats://redacted@h:4222,tls://redacted@h2:4443"},
		{"u:p@h:4222", "redacted@h:4222"},
		{"nats://u:p%zz@h:4222", "nats://redacted@h:4222"},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestLateServerRejectsCredentials covers a rejection seen in the retry
// loop rather than on the first attempt.
func TestLateServerRejectsCredentials(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	done := make(chan error, 1)
	go func() {
		nc, err := Connect(ctxTimeout(t, 20*time.Second), Options{
			URLs: fmt.Sprintf("nats://127.0.0.1:%d", port), User: "alice", Password: "wrong-pw", ReconnectWait: 50 * time.Millisecond,
		}, nil, Hooks{})
		if err == nil {
			nc.Close()
		}
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	startServer(t, server.Options{Port: port, Username: "alice", Password: "s3cret-pw"})
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "rejected the credentials (User/Password)") {
		t.Fatalf("got %v, want a credentials rejection", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("rejection took %v after the server started", d)
	}
}

// With a private inbox prefix a user needs, and may be limited to, its own
// reply subjects: it cannot read deliveries made to other clients' inboxes.
func TestInboxPrefixLetsPermissionsDenyOtherInboxes(t *testing.T) {
	t.Parallel()
	perms := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"svc.echo"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_lims.>"}},
	}
	ns := startServer(t, server.Options{Users: []*server.User{
		{Username: "lims", Password: "pw-lims", Permissions: perms},
		{Username: "svc", Password: "pw-svc"},
	}})
	svc, err := Connect(ctxTimeout(t, 10*time.Second), Options{URLs: ns.ClientURL(), User: "svc", Password: "pw-svc"}, nil, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := svc.Subscribe("svc.echo", func(m *nats.Msg) { _ = m.Respond([]byte("ok")) }); err != nil {
		t.Fatal(err)
	}
	if err := svc.Flush(); err != nil {
		t.Fatal(err)
	}
	request := func(prefix string) error {
		nc, err := Connect(ctxTimeout(t, 10*time.Second), Options{URLs: ns.ClientURL(), User: "lims", Password: "pw-lims", InboxPrefix: prefix}, nil, Hooks{})
		if err != nil {
			return err
		}
		defer nc.Close()
		_, err = nc.Request("svc.echo", nil, time.Second)
		return err
	}
	if err := request("_INBOX_lims"); err != nil {
		t.Fatalf("request with the private inbox prefix: %v", err)
	}
	if err := request(""); err == nil {
		t.Fatal("a user limited to _INBOX_lims.> received a reply on the default _INBOX prefix")
	}
}
