// Private endpoints of the storage account (blob, queue, table) and the Key Vault in the private endpoint
// subnet, with their private DNS zones linked to the app's virtual network: inside the network the usual
// names (<account>.queue.core.windows.net, <vault>.vault.azure.net) resolve to the private addresses, so
// the app, the Functions host and Key Vault references need no other setting. With a hub DNS (or on-premises
// DNS for an agent on a private route), forward these zones there as well.

param location string
param tags object

@description('Resource id of the virtual network the DNS zones are linked to (the app\'s).')
param vnetId string

@description('Resource id of the subnet that holds the private endpoints (not the delegated integration subnet).')
param subnetId string

@description('Resource id of the storage account.')
param storageAccountId string

@description('Name of the storage account (part of the endpoints\' names).')
param storageAccountName string

@description('Resource id of the Key Vault.')
param keyVaultId string

@description('Name of the Key Vault (part of its endpoint\'s name).')
param keyVaultName string

// One endpoint per sub-resource; the zone names follow the cloud (environment().suffixes).
var storageSuffix = environment().suffixes.storage
var endpoints = [
  {
    name: 'pe-${storageAccountName}-blob'
    resourceId: storageAccountId
    groupId: 'blob'
    zone: 'privatelink.blob.${storageSuffix}'
  }
  {
    name: 'pe-${storageAccountName}-queue'
    resourceId: storageAccountId
    groupId: 'queue'
    zone: 'privatelink.queue.${storageSuffix}'
  }
  {
    name: 'pe-${storageAccountName}-table'
    resourceId: storageAccountId
    groupId: 'table'
    zone: 'privatelink.table.${storageSuffix}'
  }
  {
    name: 'pe-${keyVaultName}'
    resourceId: keyVaultId
    groupId: 'vault'
    zone: 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
  }
]

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [
  for endpoint in endpoints: {
    name: endpoint.zone
    location: 'global'
    tags: tags
  }
]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [
  for (endpoint, i) in endpoints: {
    parent: zones[i]
    name: 'link-${uniqueString(vnetId)}'
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: vnetId
      }
    }
  }
]

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2024-01-01' = [
  for endpoint in endpoints: {
    name: endpoint.name
    location: location
    tags: tags
    properties: {
      subnet: {
        id: subnetId
      }
      privateLinkServiceConnections: [
        {
          name: endpoint.name
          properties: {
            privateLinkServiceId: endpoint.resourceId
            groupIds: [
              endpoint.groupId
            ]
          }
        }
      ]
    }
  }
]

resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-01-01' = [
  for (endpoint, i) in endpoints: {
    parent: privateEndpoints[i]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: endpoint.groupId
          properties: {
            privateDnsZoneId: zones[i].id
          }
        }
      ]
    }
  }
]

output endpointNames array = [for endpoint in endpoints: endpoint.name]
