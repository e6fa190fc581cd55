// Virtual network of the app: its outbound traffic leaves through a subnet delegated to
// Microsoft.App/environments (the delegation Flex Consumption requires), and the private endpoints of the
// storage account and the Key Vault sit in a second subnet. For worker mode `function`, connect this network
// to the domain controllers (peering to a hub with VPN or ExpressRoute) so LDAPS (TCP 636) reaches them.

param name string
param location string
param tags object

@description('Address space of the virtual network.')
param addressPrefix string

@description('Address range of the integration subnet: used by this app only, with room for one address per instance.')
param integrationSubnetPrefix string

@description('Address range of the subnet of the private endpoints (storage blob, queue, table; Key Vault).')
param privateEndpointSubnetPrefix string

@description('DNS servers of the network (e.g. the domain controllers, so AD_SERVER resolves); empty for Azure DNS.')
param dnsServers array = []

var integrationSubnetName = 'snet-functions'
var privateEndpointSubnetName = 'snet-private-endpoints'

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [addressPrefix]
    }
    dhcpOptions: empty(dnsServers) ? null : {
      dnsServers: dnsServers
    }
    subnets: [
      {
        name: integrationSubnetName
        properties: {
          addressPrefix: integrationSubnetPrefix
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Enabled'
          delegations: []
        }
      }
    ]
  }
}

output name string = vnet.name
output id string = vnet.id
output integrationSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, integrationSubnetName)
output privateEndpointSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, privateEndpointSubnetName)
