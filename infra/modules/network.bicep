// Virtual network for worker mode `function`: the app's outbound traffic leaves through a subnet delegated
// to Microsoft.App/environments (the delegation Flex Consumption requires). Connect this network to the
// domain controllers (peering to a hub with VPN or ExpressRoute) so LDAPS (TCP 636) reaches them.

param name string
param location string
param tags object

@description('Address space of the virtual network.')
param addressPrefix string

@description('Address range of the integration subnet: used by this app only, with room for one address per instance.')
param integrationSubnetPrefix string

@description('DNS servers of the network (e.g. the domain controllers, so AD_SERVER resolves); empty for Azure DNS.')
param dnsServers array = []

var integrationSubnetName = 'snet-functions'

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
    ]
  }
}

output name string = vnet.name
output integrationSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, integrationSubnetName)
