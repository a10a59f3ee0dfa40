package maa

// Wire formats of Microsoft Azure Attestation for Azure VM guests (attestation type AzureGuest).
//
// These types are shared by the client (this package) and the emulator
// (internal/emulator/maa). They carry no validation: each side checks what it receives on its own
// terms, so that a misreading on one side cannot be hidden by the other.
//
// Sources, all read at Azure/confidential-computing-cvm-guest-attestation@990f662 (AZGA), the
// C++ client that Azure's Linux guest attestation package is built from, and cross-checked against
// Microsoft's Python client Azure/cvm-attestation-tools (AZPY):
//   - request envelope and encodings: AZGA AttestationClientImpl.cpp (CreatePayload),
//     AttestationParameters.cpp (ToJson), TpmInfo.cpp (ToJson), IsolationInfo.cpp (ToJson),
//     include/AttestationLibConst.h (every JSON key below), AttestationHelper.cpp (base64 helpers);
//   - encrypted response: AZGA TpmUnseal.cpp (GetEncryptionParameters, GetEncryptedJwt,
//     GetEncryptedInnerKey, DecryptJwt), AttestationClientImpl.cpp (DecryptMaaToken, ParseMaaResponse);
//   - token claims: AZGA cvm-attestation-sample-app/sampleAttestationToken.json and the real token
//     printed in AZGA aks-linux-sample/README.md (kept in testdata/real/).
//
// Encodings, as AZGA writes them:
//   - "AttestationInfo" is base64url WITHOUT padding of the JSON document (binary_to_base64url);
//   - every binary field inside it is standard base64 WITH padding (binary_to_base64);
//   - OSType, OSDistro and OSBuild are strings, base64-encoded like binary fields;
//   - OSVersionMajor and OSVersionMinor are JSON integers (AZPY sends strings; we follow AZGA,
//     the client Azure ships for Linux);
//   - ClientPayload is a JSON object whose values are the base64 (standard, padded) of the
//     caller's strings (AZGA AttestationParameters.cpp ToJson). MAA echoes the object unchanged in
//     the token under x-ms-runtime.client-payload: the AKS sample sends nonce "1234" and its token
//     carries "nonce": "MTIzNA==".

// AttestPath is the path of the attestation endpoint for Azure VM guests, and AttestAPIVersion its
// api-version (AZGA AttestationClientImpl.cpp: "/attest/AzureGuest?api-version=2020-10-01").
const (
	AttestPath       = "/attest/AzureGuest"
	AttestAPIVersion = "2020-10-01"
	// PolicyAPIVersion is the data-plane api-version for GET/PUT /policies/{type}: the first
	// stable version whose spec lists AzureGuest among the policy types (Azure REST specs,
	// attestation data-plane stable/2025-06-01/attestation.json, Policy_Get and Policy_Set; the
	// 2022-08-01 spec of reference/azure-sdk.md §5 lists SgxEnclave, OpenEnclave, SevSnpVm and Tpm
	// only, so a service that checks the type per version could refuse AzureGuest there).
	PolicyAPIVersion = "2025-06-01"
	// CertsPath serves the instance's token signing keys as a JWKS.
	CertsPath = "/certs"
	// OpenIDConfigPath serves the OpenID metadata (issuer, jwks_uri).
	OpenIDConfigPath = "/.well-known/openid-configuration"
	// ProtocolVersion is AttestationProtocolVersion (AZGA AttestationParameters.h: "2.0").
	ProtocolVersion = "2.0"
	// AttestationTypeAzureGuest is the attestation (and policy) type used for Azure VM guests.
	AttestationTypeAzureGuest = "AzureGuest"
	// IsolationTrustedLaunch is IsolationInfo.Type for a Trusted Launch VM (no HCL report).
	IsolationTrustedLaunch = "TrustedLaunch"
	// TransportKeyAAD is the AES-GCM additional authenticated data of the encrypted response
	// (AZGA TpmUnseal.cpp DecryptJwt; AZPY attestation_client.py).
	TransportKeyAAD = "Transport Key"
	// OSBuildLinux is what AZGA sends as OSBuild on Linux (sic: "NotApplication"); real tokens
	// echo it in x-ms-azurevm-osbuild.
	OSBuildLinux = "NotApplication"
)

// AttestRequest is the body of POST {instance}/attest/AzureGuest.
type AttestRequest struct {
	// AttestationInfo is base64url (no padding) of the JSON encoding of AttestationInfo.
	AttestationInfo string `json:"AttestationInfo"`
}

// AttestationInfo is the JSON document inside AttestRequest.AttestationInfo
// (AZGA AttestationParameters.cpp ToJson; keys from AttestationLibConst.h).
type AttestationInfo struct {
	// AttestationProtocolVersion is "2.0".
	AttestationProtocolVersion string `json:"AttestationProtocolVersion"`
	// OSType is base64 of "Linux" or "Windows".
	OSType string `json:"OSType"`
	// OSDistro is base64 of os-release NAME (e.g. "Ubuntu").
	OSDistro string `json:"OSDistro"`
	// OSVersionMajor and OSVersionMinor come from os-release VERSION_ID.
	OSVersionMajor uint32 `json:"OSVersionMajor"`
	OSVersionMinor uint32 `json:"OSVersionMinor"`
	// OSBuild is base64 of the build string ("NotApplication" on Linux).
	OSBuild string `json:"OSBuild"`
	// TcgLogs is base64 of the raw TCG event log, "" when there is none.
	TcgLogs string `json:"TcgLogs"`
	// ClientPayload maps the caller's keys to base64 of their string values.
	ClientPayload map[string]string `json:"ClientPayload"`
	// TpmInfo carries the TPM evidence.
	TpmInfo TpmInfo `json:"TpmInfo"`
	// IsolationInfo is {"Type":"TrustedLaunch"} on Trusted Launch VMs.
	IsolationInfo IsolationInfo `json:"IsolationInfo"`
}

// TpmInfo is the TPM evidence (AZGA TpmInfo.cpp ToJson). Every string is standard base64.
type TpmInfo struct {
	// AikCert is the DER AK certificate from NV 0x01C101D0.
	AikCert string `json:"AikCert"`
	// AikPub is the marshalled TPM2B_PUBLIC of the AK at 0x81000003.
	AikPub string `json:"AikPub"`
	// PcrQuote is the bare TPMS_ATTEST of the quote.
	PcrQuote string `json:"PcrQuote"`
	// PcrSignature is the raw RSA signature bytes (AZGA UnpackPcrQuoteToRSA).
	PcrSignature string `json:"PcrSignature"`
	// EncKeyPub is the marshalled TPM2B_PUBLIC of the ephemeral key.
	EncKeyPub string `json:"EncKeyPub"`
	// EncKeyCertifyInfo is the bare TPMS_ATTEST from TPM2_Certify of the ephemeral key.
	EncKeyCertifyInfo string `json:"EncKeyCertifyInfo"`
	// EncKeyCertifyInfoSignature is the raw RSA signature over EncKeyCertifyInfo.
	EncKeyCertifyInfoSignature string `json:"EncKeyCertifyInfoSignature"`
	// PcrSet lists the quoted PCR indices.
	PcrSet []uint32 `json:"PcrSet"`
	// PCRs lists each quoted PCR's index and base64 SHA-256 value.
	PCRs []PCRValue `json:"PCRs"`
}

// PCRValue is one entry of TpmInfo.PCRs.
type PCRValue struct {
	Index  uint32 `json:"Index"`
	Digest string `json:"Digest"`
}

// IsolationInfo describes the VM's isolation (AZGA IsolationInfo.cpp ToJson). Trusted Launch VMs
// send only Type; confidential VMs also send Evidence, which this project does not produce.
type IsolationInfo struct {
	Type     string          `json:"Type"`
	Evidence *IsolationProof `json:"Evidence,omitempty"`
}

// IsolationProof is the confidential-VM evidence block; kept only so that it can be recognised
// and refused by the emulator.
type IsolationProof struct {
	Proof       string `json:"Proof,omitempty"`
	RunTimeData string `json:"RunTimeData,omitempty"`
}

// AttestResponse is the 200 body of the attest call: {"token": "..."}
// (AZGA AttestationClientImpl.cpp ParseMaaResponse). For AzureGuest the token is not a JWT but
// base64url of an EncryptedToken document.
type AttestResponse struct {
	Token string `json:"token"`
}

// EncryptedToken is the document inside AttestResponse.Token (AZGA TpmUnseal.cpp; AZPY
// attestation_client.py). Byte fields are standard base64.
type EncryptedToken struct {
	// EncryptedInnerKey is the AES key wrapped to the ephemeral TPM key with RSAES-PKCS1-v1_5
	// (AZGA passes RsaScheme::RsaEs = TPM2_ALG_RSAES to TPM2_RSA_Decrypt; AZPY uses
	// TPMS_SCHEME_RSAES).
	//
	// reference/maa.md says RSA-OAEP: that note is wrong. Both clients Microsoft ships decrypt
	// with RSAES: AZGA Tpm.h / Tss2Wrapper.h declare rsaWrapAlgId = RsaEs for the ephemeral key's
	// TPM2_RSA_Decrypt, and AZPY tpm_wrapper.py decrypts with TPMS_SCHEME_RSAES. A TPM decrypting
	// with the RSAES scheme cannot open an OAEP ciphertext, so an OAEP-wrapped key would fail in
	// both; the client (DecryptWithEphemeralKey) and the emulator use PKCS#1 v1.5.
	EncryptedInnerKey string `json:"EncryptedInnerKey"`
	// EncryptionParams names the symmetric cipher.
	EncryptionParams EncryptionParams `json:"EncryptionParams"`
	// AuthenticationData is the AES-GCM tag.
	AuthenticationData string `json:"AuthenticationData"`
	// Jwt is the AES-GCM ciphertext of the JWT (without the tag), AAD "Transport Key".
	Jwt string `json:"Jwt"`
}

// EncryptionParams values accepted by AZGA (AttestationLibConst.h): only AES, GCM, "PKCS7".
type EncryptionParams struct {
	BlockMode     string `json:"BlockMode"`     // "ChainingModeGCM"
	BlockPadding  string `json:"BlockPadding"`  // "PKCS7" (not applied by GCM; AZGA only checks the name)
	Cipher        string `json:"Cipher"`        // "AES"
	KeySizeInBits int    `json:"KeySizeInBits"` // 128, 192 or 256
	Iv            string `json:"Iv"`            // standard base64
}

// Values of EncryptionParams (AZGA AttestationLibConst.h).
const (
	BlockModeGCM    = "ChainingModeGCM"
	BlockPaddingPKC = "PKCS7"
	CipherAES       = "AES"
)

// CloudError is MAA's error body: {"error": {"code": "...", "message": "..."}} (REST CloudError;
// AZGA AttestationLibConst.h JSON_HTTP_ERROR_LOWER_KEY also accepts "Error"/"Code"/"Message").
type CloudError struct {
	Error CloudErrorBody `json:"error"`
}

// CloudErrorBody is the inner object of CloudError.
type CloudErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// StoredAttestationPolicy is the payload of the unsigned JWS sent to PUT /policies/{type}
// (Azure REST specs, attestation data-plane: {"AttestationPolicy": base64url(policy text)}).
type StoredAttestationPolicy struct {
	AttestationPolicy string `json:"AttestationPolicy"`
}

// PolicyResponse is the body of GET and PUT /policies/{type}: a token signed by the instance.
type PolicyResponse struct {
	Token string `json:"token"`
}

// OpenIDConfiguration is the subset of {instance}/.well-known/openid-configuration we read.
type OpenIDConfiguration struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

// Claim names of an AzureGuest token (AZGA sample tokens; reference/maa.md).
const (
	ClaimRuntime           = "x-ms-runtime"
	ClaimClientPayload     = "client-payload" // inside x-ms-runtime
	ClaimAttestationType   = "x-ms-attestation-type"
	ClaimPolicyHash        = "x-ms-policy-hash"
	ClaimVer               = "x-ms-ver"
	ClaimAttestedPCRs      = "x-ms-azurevm-attested-pcrs"
	ClaimSecureBoot        = "secureboot"
	ClaimVMID              = "x-ms-azurevm-vmid"
	ClaimProtocolVer       = "x-ms-azurevm-attestation-protocol-ver"
	AttestationTypeAzureVM = "azurevm"
	// NonceKey is the ClientPayload key our binding travels under, as in Microsoft's sample app.
	NonceKey = "nonce"
	// EphemeralKeyKID names the ephemeral TPM key in x-ms-runtime.keys.
	EphemeralKeyKID = "TpmEphemeralEncryptionKey"
)
