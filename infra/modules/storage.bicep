// Storage account of the function app: the Functions host (AzureWebJobsStorage), the Flex Consumption
// deployment package, guestsync's queues and its state table. Keyless: shared keys are disabled, every
// caller signs in with Entra ID and gets a data role below.

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

// Built-in role definitions (the same GUID in every tenant).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

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
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
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
// find them before the first message (the code also creates them when missing).
resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queueName in [changeQueueName, '${changeQueueName}-poison', exportQueueName, '${exportQueueName}-poison']: {
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

// The on-premises agent (guestsync worker) reads the export queue and writes state: queues and tables only.
resource agentRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in (empty(agentPrincipalId) ? [] : [storageQueueDataContributor, storageTableDataContributor]): {
    name: guid(account.id, agentPrincipalId, roleId)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: agentPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainer.name}'
