// Key Vault for guestsync's secrets. RBAC authorization (no access policies), soft delete with purge
// protection. The function app reads the secrets through Key Vault references with its user-assigned
// identity, which gets "Key Vault Secrets User" on this vault and nothing else.
//
// A secret is only created when the chosen modes use it; the app settings refer to exactly these secrets.

param name string
param location string
param tags object

@description('Principal id of the function app\'s user-assigned managed identity.')
param identityPrincipalId string

@secure()
@description('GRAPH_CLIENT_STATE: the secret Graph sends back in every change notification.')
param graphClientState string

@secure()
@description('GRAPH_CLIENT_STATE_PREVIOUS: the previous clientState, accepted during a rotation.')
param graphClientStatePrevious string?

@secure()
@description('GRAPH_CLIENT_SECRET (GRAPH_AUTH=client_secret).')
param graphClientSecret string?

@secure()
@description('GRAPH_CLIENT_CERTIFICATE: base64 PFX or PEM (GRAPH_AUTH=certificate).')
param graphClientCertificate string?

@secure()
@description('GRAPH_CLIENT_CERTIFICATE_PASSWORD: password of the PFX (GRAPH_AUTH=certificate).')
param graphClientCertificatePassword string?

@secure()
@description('AD_BIND_PASSWORD (worker mode function).')
param adBindPassword string?

@secure()
@description('SMTP_PASSWORD (GUESTSYNC_MAIL=smtp).')
param smtpPassword string?

@description('Which of the optional secrets to create: the modes that use them are chosen in main.bicep.')
param create object

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identityPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource graphClientStateSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'graph-client-state'
  properties: {
    value: graphClientState
  }
}

resource graphClientStatePreviousSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (create.graphClientStatePrevious) {
  parent: vault
  name: 'graph-client-state-previous'
  properties: {
    value: graphClientStatePrevious ?? ''
  }
}

resource graphClientSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (create.graphClientSecret) {
  parent: vault
  name: 'graph-client-secret'
  properties: {
    value: graphClientSecret ?? ''
  }
}

resource graphClientCertificateSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (create.graphClientCertificate) {
  parent: vault
  name: 'graph-client-certificate'
  properties: {
    value: graphClientCertificate ?? ''
  }
}

resource graphClientCertificatePasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (create.graphClientCertificatePassword) {
  parent: vault
  name: 'graph-client-certificate-password'
  properties: {
    value: graphClientCertificatePassword ?? ''
  }
}

resource adBindPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (create.adBindPassword) {
  parent: vault
  name: 'ad-bind-password'
  properties: {
    value: adBindPassword ?? ''
  }
}

resource smtpPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (create.smtpPassword) {
  parent: vault
  name: 'smtp-password'
  properties: {
    value: smtpPassword ?? ''
  }
}

// Versionless secret URIs: the app follows the latest version of each secret (a rotation needs no redeploy).
output name string = vault.name
output secretUris object = {
  graphClientState: '${vault.properties.vaultUri}secrets/${graphClientStateSecret.name}'
  graphClientStatePrevious: '${vault.properties.vaultUri}secrets/graph-client-state-previous'
  graphClientSecret: '${vault.properties.vaultUri}secrets/graph-client-secret'
  graphClientCertificate: '${vault.properties.vaultUri}secrets/graph-client-certificate'
  graphClientCertificatePassword: '${vault.properties.vaultUri}secrets/graph-client-certificate-password'
  adBindPassword: '${vault.properties.vaultUri}secrets/ad-bind-password'
  smtpPassword: '${vault.properties.vaultUri}secrets/smtp-password'
}
