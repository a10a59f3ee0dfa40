package localstack

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

// trustStoreRoot is the certificate of the stack's Notation trust store, as the file holds it.
func trustStoreRoot(t *testing.T, st *State) ([]byte, *x509.Certificate) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(st.NotationConfig, "truststore", "x509", "ca", SigningKeyName, "root-0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("no PEM in the trust store")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return b, c
}

// keyPath is the part of a key id after the vault: /keys/NAME/VERSION, which a restart keeps even
// when the vault moved to another port.
func keyPath(st *State) string { return strings.TrimPrefix(st.KeyID, st.KeyVaultURL) }

// TestRestartKeepsSigningKey: the emulated vault keeps its keys and certificates in the state
// directory, so a restarted stack signs with the key of its previous start: a signature made
// through Key Vault before the restart verifies with the key the vault reports after it, under
// the same key id (ATTEST_KEY_ID), and with the certificate of the trust store, which the restart
// wrote again unchanged; the vault still signs with that key. The vault's state file is 0600, and
// a start refuses it, naming it, once others may read it.
func TestRestartKeepsSigningKey(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rs256 := azkeys.SignatureAlgorithmRS256
	sign := func(st *State, digest []byte) []byte {
		t.Helper()
		keys, id := signingKeyClient(t, st)
		res, err := keys.Sign(ctx, id.Name, id.Version, azkeys.SignParameters{Algorithm: &rs256, Value: digest}, nil)
		if err != nil {
			t.Fatalf("signing with %s: %v", st.KeyID, err)
		}
		return res.Result
	}

	first, stop := runStack(t, dir)
	digest := sha256.Sum256([]byte("signed before the restart"))
	sig := sign(first, digest[:])
	storeBefore, _ := trustStoreRoot(t, first)
	stop()
	state := filepath.Join(dir, "keyvault", "state.json")
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the vault's state file: %v; want it 0600", err)
	}

	second, stop := runStack(t, dir)
	if keyPath(second) != keyPath(first) || second.KeyVaultURL == first.KeyVaultURL && second.KeyID != first.KeyID {
		t.Fatalf("key id %s after the restart, was %s", second.KeyID, first.KeyID)
	}
	for _, w := range second.Warnings {
		if strings.Contains(w, "signing certificate was replaced") {
			t.Errorf("the restart replaced the signing certificate: %s", w)
		}
	}
	// The key the vault reports now verifies the signature made before.
	keys, id := signingKeyClient(t, second)
	got, err := keys.GetKey(ctx, id.Name, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Key == nil || got.Key.KID == nil || string(*got.Key.KID) != second.KeyID {
		t.Fatalf("the vault's latest signing key is not %s: %+v", second.KeyID, got.Key)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(got.Key.N), E: int(new(big.Int).SetBytes(got.Key.E).Int64())}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
		t.Errorf("the key after the restart does not verify the signature made before it: %v", err)
	}
	// The trust store holds the same certificate, of that key.
	storeAfter, cert := trustStoreRoot(t, second)
	if !bytes.Equal(storeAfter, storeBefore) {
		t.Error("the restart wrote another certificate to the trust store")
	}
	if !pub.Equal(cert.PublicKey) {
		t.Error("the trust store's certificate is not of the signing key")
	}
	// And the vault signs with the same private key.
	again := sha256.Sum256([]byte("signed after the restart"))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, again[:], sign(second, again[:])); err != nil {
		t.Errorf("a signature made after the restart does not verify: %v", err)
	}
	stop()

	// A state file others may read is refused: the stack does not start, names the file and says
	// to mend its mode, not to remove it (it holds the signing key).
	if err := os.Chmod(state, 0o644); err != nil {
		t.Fatal(err)
	}
	err = Run(ctx, Options{StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), state) || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), "remove it") {
		t.Fatalf("Run with the vault's state file readable by others: %v; want an error naming %s that says to chmod it, not to remove it", err, state)
	}
}
