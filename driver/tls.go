package driver

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"google.golang.org/grpc/codes"

	"github.com/llorch/llorch/engine"
)

// TLS reports whether the task's port serves HTTPS (its instance is
// announced with tls=1).
func (st taskState) TLS() bool { return st.Config.TLSCertFile != "" }

// placeTLS hands the task's certificate and key to whoever serves the
// task's port: the relay when the engine sits behind one, else the engine
// itself, which must be able to (llama-server, vLLM). Relative paths are
// in the task directory, where a template block renders secrets/.
func placeTLS(st *taskState, adapter engine.Adapter) error {
	c := st.Config
	if c.TLSCertFile == "" && c.TLSKeyFile == "" && c.TLSClientCAFile == "" {
		return nil
	}
	if c.TLSCertFile == "" || c.TLSKeyFile == "" {
		return permanentError(codes.InvalidArgument, "task config: fields %q and %q: set both or neither", "tls_cert_file", "tls_key_file")
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) || st.TaskDir == "" {
			return p
		}
		return filepath.Join(st.TaskDir, p)
	}
	cert, key, ca := abs(c.TLSCertFile), abs(c.TLSKeyFile), abs(c.TLSClientCAFile)
	if r := st.Isolation.Relay; r != nil {
		r.TLSCertFile, r.TLSKeyFile, r.ClientCAFile = cert, key, ca
		return nil
	}
	if !engine.ServesTLS(adapter) {
		return permanentError(codes.InvalidArgument, "task config: field %q: engine %s cannot serve TLS itself (llamacpp and vllm can; engines behind the relay get TLS from it)", "tls_cert_file", st.Engine)
	}
	if ca != "" {
		return permanentError(codes.InvalidArgument, "task config: field %q: engine %s cannot require client certificates itself (only the relay can)", "tls_client_ca_file", st.Engine)
	}
	st.Spec.TLSCertFile, st.Spec.TLSKeyFile = cert, key
	return nil
}

// engineProbeTLS is the supervisor's base URL and client for an engine
// serving HTTPS itself. The probe goes to loopback, a name the certificate
// need not carry (it names the announced address), so instead of CA and
// name checks the engine must present exactly the certificate in the
// task's file (re-read per handshake, so a rotated file is followed):
// stricter than a CA check, since only this task's engine has its key.
func engineProbeTLS(spec engine.Spec) (string, *http.Client) {
	host := spec.Host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	certFile := spec.TLSCertFile
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("engine presented no certificate")
			}
			b, err := os.ReadFile(certFile)
			if err != nil {
				return fmt.Errorf("read the task's certificate: %w", err)
			}
			// The first certificate (a combined file may put the key first).
			var blk *pem.Block
			for rest := b; ; {
				if blk, rest = pem.Decode(rest); blk == nil || blk.Type == "CERTIFICATE" {
					break
				}
			}
			if blk == nil || !bytes.Equal(blk.Bytes, cs.PeerCertificates[0].Raw) {
				return errors.New("engine's certificate is not the task's tls_cert_file")
			}
			return nil
		},
	}
	return "https://" + net.JoinHostPort(host, strconv.Itoa(spec.Port)), &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}
