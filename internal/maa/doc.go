// Package maa talks to Microsoft Azure Attestation (MAA) for Azure VM guests and verifies the
// tokens it issues.
//
// The client side (Client) sends the local TPM's evidence to {instance}/attest/AzureGuest in the
// encodings of Azure's own Linux guest client and opens the response, which MAA encrypts to the
// TPM's ephemeral key: only the TPM that produced the evidence, in the measured PCR state, can
// read the token.
//
// The relying-party side (Verifier) checks a token against the instance's published signing keys
// (never keys carried in the token itself, and fetched only over https from the instance itself),
// its issuer, its validity window, its age, its attestation type (azurevm: only then is the client
// payload bound to TPM evidence) and the nonce the caller bound into it. Only the Verifier constructs a Token, so code that needs a verified
// token can take a *Token and be sure the checks ran.
//
// The wire formats, with their sources, are in wire.go.
package maa
