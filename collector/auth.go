package collector

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// LoadToken reads a shared secret from a file, ignoring surrounding
// whitespace (a trailing newline, as a Kubernetes Secret often has).
func LoadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read --auth-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("cannot use --auth-token-file %s: it is empty", path)
	}
	return token, nil
}

// RequireBearer answers 401, in JSON, to requests without
// "Authorization: Bearer <token>". The comparison takes the same time
// whatever the guess: both sides are hashed to a fixed length first, so
// not even the token's length leaks.
func RequireBearer(token string, h http.Handler) http.Handler {
	return requireToken(token, "Authorization", "Bearer ", h)
}

// TokenHeader carries the sidecar's token on proxied calls, whose
// Authorization header is the provider's.
const TokenHeader = "X-LLMUsage-Token"

// RequireTokenHeader is RequireBearer for the proxy's routes: the token
// comes in TokenHeader.
func RequireTokenHeader(token string, h http.Handler) http.Handler {
	return requireToken(token, TokenHeader, "", h)
}

func requireToken(token, header, prefix string, h http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get(header), prefix)
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="llmusage"`)
			writeError(w, errorf(http.StatusUnauthorized, "cannot serve %s without a valid %s: %stoken (--auth-token-file)", r.URL.Path, header, prefix))
			return
		}
		h.ServeHTTP(w, r)
	})
}
