// Storage account of the function app: the Functions host (AzureWebJobsStorage), the Flex Consumption
// deployment package, guestsync's queues and its state table. Keyless: shared keys are disabled, every
// caller signs in with Entra ID and gets a data role below.
//
// Network: with a virtual network (enableVnet) the app reaches the account through private endpoints
// (modules/privatelink.bicep) and the public endpoint is off, or, when the on-premises agent has no private
// route, open only to the agent's egress addresses. Without one the public endpoint must stay reachable for
// the app (a Flex Consumption app without VNet integration has no fixed outbound addresses and is not a
// trusted Azure service), so Entra ID sign-in and the data roles are the only gate: the weaker option.

@description('Name of the storage account (3-24 lowercase letters and digits).')
param name string

param location string
param tags object

@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Queue of changed user ids (GUESTSYNC_CHANGE_QUEUE).')
param changeQueueName string

@description('Queue of export operations for the AD worker (GUESTSYNC_EXPORT_QUEUE).')
param exportQueueName string

@description('Table of guest state (GUESTSYNC_STATE_TABLE).')
param stateTableName string

@description('Principal id of the function app\'s user-assigned managed identity.')
param identityPrincipalId string

@description('Object id of the on-premises agent\'s service principal (worker mode agent); empty for none.')
param agentPrincipalId string = ''

@description('The app reaches this account through private endpoints in a virtual network.')
param enableVnet bool

@description('With enableVnet: the on-premises agent\'s public egress addresses or CIDR ranges, allowed through the public endpoint (which stays off when empty).')
param agentEgressIpRanges array = []

@description('Log Analytics workspace that receives the queue and table write and delete logs.')
param logAnalyticsWorkspaceId string

// Built-in role definitions (the same GUID in every tenant).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

// The names shared/settings.py derives: <queue> and <queue>-poison (the Functions host's poison queue).
var queueNames = [
  changeQueueName
  '${changeQueueName}-poison'
  exportQueueName
  '${exportQueueName}-poison'
]

var publicForAgent = enableVnet && !empty(agentEgressIpRanges)

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: (enableVnet && !publicForAgent) ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: enableVnet ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
      ipRules: [for range in (enableVnet ? agentEgressIpRanges : []): {
        value: range
        action: 'Allow'
      }]
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

// The queues and their poison queues exist from the start, so the on-premises agent and `guestsync status`
// find them before the first message (the code also creates them when missing), and the agent's roles can
// be scoped to them.
resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queueName in queueNames: {
    parent: queueService
    name: queueName
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource stateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: stateTableName
}

// Who wrote or deleted queue messages and state entities (the agent's and the app's sign-ins), in the
// workspace: the audit trail of every change to a guest's state.
resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'queue-writes-to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'table-writes-to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

// The managed identity: blob (host leases and timers, deployment package), queues and the state table.
resource identityRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in [storageBlobDataOwner, storageQueueDataContributor, storageTableDataContributor]: {
    name: guid(account.id, identityPrincipalId, roleId)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: identityPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

// The on-premises agent (guestsync worker) reads and writes exactly its queues (with their poison queues)
// and the state table: each role is scoped to that queue or table, never to the account, so the agent's
// credential reaches neither the host's blobs nor any other queue or table.
resource agentQueueRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (queueName, i) in queueNames: if (!empty(agentPrincipalId)) {
    name: guid(queues[i].id, agentPrincipalId, storageQueueDataContributor)
    scope: queues[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
      principalId: agentPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource agentTableRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(agentPrincipalId)) {
  name: guid(stateTable.id, agentPrincipalId, storageTableDataContributor)
  scope: stateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: agentPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainer.name}'
