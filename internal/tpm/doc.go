// Package tpm gathers TPM 2.0 evidence the way Azure's Linux guest attestation client does on an
// Azure Trusted Launch VM, and opens what Microsoft Azure Attestation returns for it.
//
// The evidence is the one MAA's AzureGuest endpoint takes (see Evidence): the attestation key at
// persistent handle AKHandle and its certificate at NV index AKCertIndex, a quote by that key over
// the SHA-256 PCRs 0-7 with empty qualifying data, the PCR values, the firmware TCG event log, and
// an ephemeral RSA-2048 decryption key created in the NULL hierarchy, bound by its authPolicy to
// those PCR values and certified by the AK. MAA encrypts the token to that ephemeral key, so only
// this TPM, in this PCR state, can read it; DecryptWithEphemeralKey unwraps it with that key.
//
// Every step follows Azure's own C++ client (Azure/confidential-computing-cvm-guest-attestation,
// "AZGA" below: Tss2Wrapper.cpp, Tss2Util.cpp, AttestationClientImpl.cpp) so that the evidence is
// what real MAA expects. The package also holds a provisioner (Provision, CA) that makes a TPM
// simulator look like an Azure vTPM for tests and the local stack.
package tpm
