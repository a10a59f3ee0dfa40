module github.com/attested-kv/attested-kv

go 1.26

require (
	github.com/go-jose/go-jose/v4 v4.1.9 // indirect
	github.com/google/go-attestation v0.6.4 // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/google/go-tpm-tools v0.4.10 // indirect
	github.com/spf13/pflag v1.1.0 // indirect
	golang.org/x/sys v0.45.0 // indirect
)
