package main

import "testing"

// TestAzureCredential: an Entra ID credential is made for Azure container registries only, so
// that no other registry is ever sent an ACR token exchange.
func TestAzureCredential(t *testing.T) {
	tests := []struct {
		ref   string
		azure bool
	}{
		{"myreg.azurecr.io/app@sha256:" + zeros, true},
		{"MyReg.AzureCR.io:443/app@sha256:" + zeros, true},
		{"localhost:5000/app@sha256:" + zeros, false},
		{"myreg.azurecr.io.example.com/app@sha256:" + zeros, false},
		{"ghcr.io/azurecr.io/app@sha256:" + zeros, false},
	}
	for _, tt := range tests {
		cred, err := azureCredential(tt.ref)
		if err != nil || (cred != nil) != tt.azure {
			t.Errorf("azureCredential(%q) = %v, %v; want a credential: %v", tt.ref, cred, err, tt.azure)
		}
	}
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"
