package consul

import (
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// TLS is how a llorch process reaches Consul over HTTPS. Empty fields keep
// what consulapi.DefaultConfig read from the environment
// (CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT,
// CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME, CONSUL_HTTP_SSL_VERIFY).
type TLS struct {
	CAFile   string // PEM bundle the agent's certificate is verified against
	CertFile string // client certificate, when the agent verifies clients
	KeyFile  string
}

// Apply puts t into cc and gives cc an HTTP client that uses its TLS
// settings (from t or the environment) with the given per-call timeout
// (0: none, for blocking queries). Any of t's files means HTTPS.
func (t TLS) Apply(cc *consulapi.Config, timeout time.Duration) error {
	if t.CAFile != "" {
		cc.TLSConfig.CAFile = t.CAFile
	}
	if t.CertFile != "" {
		cc.TLSConfig.CertFile, cc.TLSConfig.KeyFile = t.CertFile, t.KeyFile
	}
	if (t.CAFile != "" || t.CertFile != "") && !strings.HasPrefix(cc.Address, "http://") {
		cc.Scheme = "https"
	}
	// consulapi builds its TLS transport only when it makes the client
	// itself: a client set by hand must be made the same way, or the CA
	// and client certificate are silently dropped.
	hc, err := consulapi.NewHttpClient(cc.Transport, cc.TLSConfig)
	if err != nil {
		return err
	}
	hc.Timeout = timeout
	cc.HttpClient = hc
	return nil
}
