// Key Vault for guestsync's secrets. RBAC authorization (no access policies), soft delete with purge
// protection. The function app reads the secrets through Key Vault references with its user-assigned
// identity, which gets "Key Vault Secrets User" on each secret it uses (not on the vault; modules/secret.bicep):
// a new secret in this vault is not readable by the app until a role assignment says so.
//
// A secret is only created when the chosen modes use it; the app settings refer to exactly these secrets.
// Network: with a virtual network the vault is reached through its private endpoint only (public network
// access off). Without one the app resolves its Key Vault references over the public endpoint (no VNet
// integration, no fixed outbound addresses), so the vault stays reachable there and RBAC is the gate.
// Every access (and every denied one) is audited to the Log Analytics workspace.

param name string
param location string
param tags object

@description('Principal id of the function app\'s user-assigned managed identity.')
param identityPrincipalId string

@description('The app reaches this vault through a private endpoint in a virtual network: public network access off.')
param enableVnet bool

@description('Log Analytics workspace that receives the vault\'s audit events.')
param logAnalyticsWorkspaceId string

@secure()
@description('GRAPH_CLIENT_STATE: the secret Graph sends back in every change notification.')
param graphClientState string

@secure()
@description('GUESTSYNC_WEBHOOK_KEY: the function key (named graph) in the notification and lifecycle URLs.')
param webhookFunctionKey string

// The optional secrets: an empty string means "not given" (the only default a secure parameter may have).
@secure()
@description('GRAPH_CLIENT_STATE_PREVIOUS: the previous clientState, accepted during a rotation.')
param graphClientStatePrevious string = ''

@secure()
@description('GRAPH_CLIENT_SECRET (GRAPH_AUTH=client_secret).')
param graphClientSecret string = ''

@secure()
@description('GRAPH_CLIENT_CERTIFICATE: base64 PFX or PEM (GRAPH_AUTH=certificate).')
param graphClientCertificate string = ''

@secure()
@description('GRAPH_CLIENT_CERTIFICATE_PASSWORD: password of the PFX (GRAPH_AUTH=certificate).')
param graphClientCertificatePassword string = ''

@secure()
@description('AD_BIND_PASSWORD (worker mode function).')
param adBindPassword string = ''

@secure()
@description('GUESTSYNC_OWNERSHIP_KEY (worker mode function).')
param ownershipKey string = ''

@secure()
@description('GUESTSYNC_OWNERSHIP_KEY_PREVIOUS (worker mode function, during a rotation).')
param ownershipKeyPrevious string = ''

@secure()
@description('SMTP_PASSWORD (GUESTSYNC_MAIL=smtp).')
param smtpPassword string = ''

@description('Which of the optional secrets to create: the modes that use them are chosen in main.bicep.')
param create object

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
    publicNetworkAccess: enableVnet ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: enableVnet ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// Who read, listed, changed or was refused a secret: AuditEvent to the workspace.
resource auditLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

// Each secret with its own reader role assignment (modules/secret.bicep); the optional ones only where
// the chosen modes use them.
module graphClientStateSecret 'secret.bicep' = {
  name: 'secret-graph-client-state'
  params: {
    vaultName: vault.name
    secretName: 'graph-client-state'
    value: graphClientState
    readerPrincipalId: identityPrincipalId
  }
}

module webhookFunctionKeySecret 'secret.bicep' = {
  name: 'secret-webhook-function-key'
  params: {
    vaultName: vault.name
    secretName: 'webhook-function-key'
    value: webhookFunctionKey
    readerPrincipalId: identityPrincipalId
  }
}

module graphClientStatePreviousSecret 'secret.bicep' = if (create.graphClientStatePrevious) {
  name: 'secret-graph-client-state-previous'
  params: {
    vaultName: vault.name
    secretName: 'graph-client-state-previous'
    value: graphClientStatePrevious
    readerPrincipalId: identityPrincipalId
  }
}

module graphClientSecretSecret 'secret.bicep' = if (create.graphClientSecret) {
  name: 'secret-graph-client-secret'
  params: {
    vaultName: vault.name
    secretName: 'graph-client-secret'
    value: graphClientSecret
    readerPrincipalId: identityPrincipalId
  }
}

module graphClientCertificateSecret 'secret.bicep' = if (create.graphClientCertificate) {
  name: 'secret-graph-client-certificate'
  params: {
    vaultName: vault.name
    secretName: 'graph-client-certificate'
    value: graphClientCertificate
    readerPrincipalId: identityPrincipalId
  }
}

module graphClientCertificatePasswordSecret 'secret.bicep' = if (create.graphClientCertificatePassword) {
  name: 'secret-graph-client-certificate-password'
  params: {
    vaultName: vault.name
    secretName: 'graph-client-certificate-password'
    value: graphClientCertificatePassword
    readerPrincipalId: identityPrincipalId
  }
}

module adBindPasswordSecret 'secret.bicep' = if (create.adBindPassword) {
  name: 'secret-ad-bind-password'
  params: {
    vaultName: vault.name
    secretName: 'ad-bind-password'
    value: adBindPassword
    readerPrincipalId: identityPrincipalId
  }
}

module ownershipKeySecret 'secret.bicep' = if (create.ownershipKey) {
  name: 'secret-ownership-key'
  params: {
    vaultName: vault.name
    secretName: 'ownership-key'
    value: ownershipKey
    readerPrincipalId: identityPrincipalId
  }
}

module ownershipKeyPreviousSecret 'secret.bicep' = if (create.ownershipKeyPrevious) {
  name: 'secret-ownership-key-previous'
  params: {
    vaultName: vault.name
    secretName: 'ownership-key-previous'
    value: ownershipKeyPrevious
    readerPrincipalId: identityPrincipalId
  }
}

module smtpPasswordSecret 'secret.bicep' = if (create.smtpPassword) {
  name: 'secret-smtp-password'
  params: {
    vaultName: vault.name
    secretName: 'smtp-password'
    value: smtpPassword
    readerPrincipalId: identityPrincipalId
  }
}

// Versionless secret URIs: the app follows the latest version of each secret (a rotation needs no redeploy).
// The optional ones are spelt out: a module that was not deployed has no outputs.
output name string = vault.name
output id string = vault.id
output secretUris object = {
  graphClientState: graphClientStateSecret.outputs.uri
  webhookFunctionKey: webhookFunctionKeySecret.outputs.uri
  graphClientStatePrevious: '${vault.properties.vaultUri}secrets/graph-client-state-previous'
  graphClientSecret: '${vault.properties.vaultUri}secrets/graph-client-secret'
  graphClientCertificate: '${vault.properties.vaultUri}secrets/graph-client-certificate'
  graphClientCertificatePassword: '${vault.properties.vaultUri}secrets/graph-client-certificate-password'
  adBindPassword: '${vault.properties.vaultUri}secrets/ad-bind-password'
  ownershipKey: '${vault.properties.vaultUri}secrets/ownership-key'
  ownershipKeyPrevious: '${vault.properties.vaultUri}secrets/ownership-key-previous'
  smtpPassword: '${vault.properties.vaultUri}secrets/smtp-password'
}
