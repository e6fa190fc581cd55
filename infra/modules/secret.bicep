// One Key Vault secret and the one principal that may read it: "Key Vault Secrets User" scoped to this
// secret, not to the vault. keyvault.bicep calls it once per secret, conditionally for the optional ones; the
// condition sits on the module, so the secret itself is an unconditional resource that checkov (which does
// not look inside `if` resources) checks like any other.

@description('Name of the vault that holds the secret.')
param vaultName string

@description('Name of the secret (the last segment of its URI).')
param secretName string

@secure()
@description('The secret\'s value.')
param value string

@description('Principal id of the identity that reads the secret (the function app\'s, through a Key Vault reference).')
param readerPrincipalId string

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: secretName
  properties: {
    value: value
    contentType: 'text/plain'
  }
}

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(secret.id, readerPrincipalId, keyVaultSecretsUser)
  scope: secret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Versionless: the app follows the latest version of the secret (a rotation needs no redeploy).
output uri string = '${vault.properties.vaultUri}secrets/${secret.name}'
