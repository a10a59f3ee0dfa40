package gate

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/notaryproject/notation-plugin-framework-go/plugin"
)

// TestToPluginErrorRedacts: whatever the error, a plugin error already made among them, the
// message ToPluginError returns (notation's output and the log) holds no credential, and the
// code is kept.
func TestToPluginErrorRedacts(t *testing.T) {
	const jws = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
	tests := []struct {
		name   string
		err    error
		code   plugin.ErrorCode
		secret string
		kept   string
	}{
		{"a plugin error, wrapped", fmt.Errorf("signing: %w", plugin.NewError(plugin.ErrorCodeAccessDenied, "refused token "+jws)), plugin.ErrorCodeAccessDenied, jws, "refused token"},
		{"a plugin error", plugin.NewError(plugin.ErrorCodeThrottled, `POST "https://u:S3cret@tsa.example/ts": 429`), plugin.ErrorCodeThrottled, "S3cret", "429"},
		{"any other error", errors.New(`timestamp: POST "http://u:S3cret@tsa.example/ts": bad status: 503`), plugin.ErrorCodeGeneric, "S3cret", "503"},
	}
	for _, tc := range tests {
		perr := ToPluginError(tc.err)
		if perr.ErrCode != tc.code || strings.Contains(perr.Message, tc.secret) || !strings.Contains(perr.Message, tc.kept) {
			t.Errorf("%s: %s %q; want %s, without %q, naming %q", tc.name, perr.ErrCode, perr.Message, tc.code, tc.secret, tc.kept)
		}
	}
}
