package maa

import (
	"crypto/aes"
	"crypto/cipher"
	"regexp"
	"testing"
)

// compactJWS is the shape open must require of the plaintext, written apart from the code under
// test: three base64url segments, none empty.
var compactJWS = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

// FuzzOpenEncryptedToken seals fuzzed plaintexts as MAA does (AES-GCM under the inner key, with
// TransportKeyAAD), which FuzzDecodeEncryptedToken cannot (its key is never right), and checks
// open: an untouched response opens to exactly its plaintext when that is a compact JWS and is
// refused otherwise; one whose ciphertext, tag or IV has a flipped bit, or opened with another key,
// is always refused.
func FuzzOpenEncryptedToken(f *testing.F) {
	f.Add([]byte("eyJhbGciOiJSUzI1NiJ9.eyJub25jZSI6IngifQ.c2ln"), uint8(2), uint16(0), uint8(0))
	f.Add([]byte("a.b.c"), uint8(0), uint16(3), uint8(1))
	f.Add([]byte("a.b."), uint8(1), uint16(0), uint8(2))
	f.Add([]byte("a.b.c\n"), uint8(2), uint16(1), uint8(3))
	f.Add([]byte("a.b+c.d"), uint8(2), uint16(0), uint8(0))
	f.Fuzz(func(t *testing.T, plain []byte, size uint8, flip uint16, where uint8) {
		bits := []int{128, 192, 256}[int(size)%3]
		key := make([]byte, bits/8)
		for i := range key {
			key[i] = byte(i*7 + 1)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			t.Fatal(err)
		}
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			t.Fatal(err)
		}
		iv := make([]byte, gcmIVSize)
		iv[0] = 9
		sealed := gcm.Seal(nil, iv, plain, []byte(TransportKeyAAD))
		n := len(sealed) - gcmTagSize
		r := &encryptedResponse{innerKey: []byte{1}, keyBits: bits, iv: iv, ciphertext: sealed[:n], tag: sealed[n:]}

		got, err := r.open(key)
		if compactJWS.Match(plain) {
			if err != nil || got != string(plain) {
				t.Fatalf("open(%q) = %q, %v; want the plaintext", plain, got, err)
			}
		} else if err == nil {
			t.Fatalf("open accepted %q, which is not a compact JWS", plain)
		}

		other := append([]byte(nil), key...)
		other[0] ^= 1
		if _, err := r.open(other); err == nil {
			t.Fatal("opened with another key")
		}
		var target []byte
		switch where % 3 {
		case 0:
			target = r.ciphertext
		case 1:
			target = r.tag
		default:
			target = r.iv
		}
		if len(target) == 0 {
			return // an empty plaintext has no ciphertext to alter
		}
		i := int(flip) % (len(target) * 8)
		target[i/8] ^= 1 << (i % 8)
		if _, err := r.open(key); err == nil {
			t.Fatalf("opened a response with bit %d of its %s flipped", i, []string{"ciphertext", "tag", "IV"}[where%3])
		}
	})
}
