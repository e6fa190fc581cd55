// guestsync in Azure: a Flex Consumption function app (Python 3.11) with one user-assigned managed identity
// for everything (storage, Key Vault references, Application Insights, Microsoft Graph), a keyless storage
// account, Key Vault for the secrets, Application Insights and, for worker mode `function`, an optional
// virtual network.
//
// Deploy with `azd up` (infra/main.parameters.json maps azd environment values to these parameters) or with
// `az deployment group create -g <group> -f infra/main.bicep -p ...`. README.md, Deployment, has both.
// Every app setting the code reads is set below (tests/unit/test_infra.py checks it against shared/settings.py).

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); part of the unique suffix of the resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource; must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string = resourceGroup().location

@description('Name of the function app; empty: func-guestsync-<unique suffix>. Part of the webhook URL.')
param functionAppName string = ''

@description('Tags added to every resource.')
param tags object = {}

@description('Flex Consumption: the most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: memory of one instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Flex Consumption: always-ready instances of the function apply_change (the change queue\'s listener). 1 keeps an instance polling, so an invite is picked up within maxPollingInterval instead of waiting for a cold start; it is billed as a baseline all month (docs/deployment.md, Latency, polling and what idle costs). 0 lets the function scale to zero.')
@minValue(0)
@maxValue(10)
param alwaysReadyApply int = 1

@description('Flex Consumption: always-ready instances of the HTTP group (the webhook). 0 lets it scale to zero: the first notification after idle waits for a cold start. 1 keeps the webhook warm at the same baseline price as alwaysReadyApply.')
@minValue(0)
@maxValue(10)
param alwaysReadyHttp int = 0

// ---------------------------------------------------------------------------------------------------------
// Microsoft Graph
// ---------------------------------------------------------------------------------------------------------

@description('GRAPH_AUTH: managed_identity (the app\'s user-assigned identity), client_secret or certificate (an app registration).')
@allowed([
  'managed_identity'
  'client_secret'
  'certificate'
])
param graphAuth string = 'managed_identity'

@description('GRAPH_CLOUD: the national cloud of the tenant; it sets the Graph endpoint, sign-in authority and scope.')
@allowed([
  'global'
  'usgov'
  'usgovdod'
  'china'
])
param graphCloud string = 'global'

@description('GRAPH_TENANT_ID: the Entra tenant of the guests; empty: the tenant of this deployment.')
param graphTenantId string = ''

@description('GRAPH_CLIENT_ID for client_secret and certificate: the app registration\'s application (client) id. Ignored for managed_identity (the identity\'s client id is used).')
param graphClientId string = ''

@secure()
@minLength(32)
@maxLength(128)
@description('GRAPH_CLIENT_STATE: secret Graph sends back in every notification (32-128 characters). azd generates one when it is not set.')
@metadata({
  azd: {
    type: 'generate'
    config: {
      length: 64
      noSpecial: true
    }
  }
})
param graphClientState string

@secure()
@minLength(32)
@maxLength(128)
@description('GUESTSYNC_WEBHOOK_KEY: the function key (named graph) the notification and lifecycle URLs carry as ?code=; kept in Key Vault. azd generates one when it is not set.')
@metadata({
  azd: {
    type: 'generate'
    config: {
      length: 64
      noSpecial: true
    }
  }
})
param webhookFunctionKey string

@secure()
@description('GRAPH_CLIENT_STATE_PREVIOUS: the previous clientState, accepted during a rotation; omit otherwise.')
param graphClientStatePrevious string = ''

@secure()
@description('GRAPH_CLIENT_SECRET: client secret of the app registration (GRAPH_AUTH=client_secret only).')
param graphClientSecret string = ''

@secure()
@description('GRAPH_CLIENT_CERTIFICATE: base64 PFX (or PEM) with the private key (GRAPH_AUTH=certificate only).')
param graphClientCertificate string = ''

@secure()
@description('GRAPH_CLIENT_CERTIFICATE_PASSWORD: password of that PFX, if it has one (GRAPH_AUTH=certificate only).')
param graphClientCertificatePassword string = ''

// ---------------------------------------------------------------------------------------------------------
// guestsync behaviour
// ---------------------------------------------------------------------------------------------------------

@description('GUESTSYNC_WORKER_MODE: agent (the AD worker runs on-premises as `guestsync worker`) or function (the worker runs in this app; needs enableVnet and the AD_* parameters).')
@allowed([
  'agent'
  'function'
])
param workerMode string = 'agent'

@description('GUESTSYNC_UPN_SUFFIXES: comma-separated UPN suffixes allowed for guests besides the tenant\'s initial domain (guests moved to a verified custom domain); empty: the initial domain only.')
param upnSuffixes string = ''

@description('GUESTSYNC_SCOPE_GROUP_ID: object id of an Entra group whose transitive members get accounts; empty: all guests.')
param scopeGroupId string = ''

@description('GUESTSYNC_DEPROVISION: what happens to the account of a guest who leaves scope.')
@allowed([
  'archive'
  'none'
])
param deprovision string = 'archive'

@description('GUESTSYNC_DELETE_AFTER_DAYS: delete archived accounts after this many days (0-36500); empty: never.')
param deleteAfterDays string = ''

@description('GUESTSYNC_BREAKER_THRESHOLD: disables + deletes per window before further ones are held for approval.')
@minValue(1)
@maxValue(1000000)
param breakerThreshold int = 25

@description('GUESTSYNC_BREAKER_WINDOW_MINUTES: the breaker\'s rolling window.')
@minValue(1)
@maxValue(525600)
param breakerWindowMinutes int = 60

@description('GUESTSYNC_CHANGE_QUEUE: queue of changed user ids.')
param changeQueueName string = 'guestsync-changes'

@description('GUESTSYNC_EXPORT_QUEUE: queue of export operations for the AD worker.')
param exportQueueName string = 'guestsync-exports'

@description('GUESTSYNC_STATE_TABLE: table of guest state.')
param stateTableName string = 'guestsync'

@description('GUESTSYNC_SUBSCRIPTION_SCHEDULE: NCRONTAB schedule of the Graph subscription check/renewal.')
param subscriptionSchedule string = '0 0 */6 * * *'

@description('GUESTSYNC_RECONCILE_SCHEDULE: NCRONTAB schedule of the reconcile (runs where the worker runs).')
param reconcileSchedule string = '0 30 * * * *'

@description('GUESTSYNC_LOG_FORMAT: text (Application Insights) or json lines.')
@allowed([
  'text'
  'json'
])
param logFormat string = 'text'

// ---------------------------------------------------------------------------------------------------------
// Operator alerts (mail)
// ---------------------------------------------------------------------------------------------------------

@description('GUESTSYNC_MAIL: none, graph (sendMail as a mailbox; needs the Graph permission Mail.Send) or smtp.')
@allowed([
  'none'
  'graph'
  'smtp'
])
param mailMode string = 'none'

@description('GUESTSYNC_MAIL_TO: comma-separated admin addresses.')
param mailTo string = ''

@description('GUESTSYNC_MAIL_FROM: graph: the mailbox (UPN) that sends; smtp: the From address.')
param mailFrom string = ''

@description('GUESTSYNC_ALERT_SCHEDULE: NCRONTAB schedule of the alerts timer (with GUESTSYNC_MAIL not none) and of the agent_health timer (worker mode agent).')
param alertSchedule string = '0 */5 * * * *'

@description('SMTP_HOST: the SMTP relay (GUESTSYNC_MAIL=smtp).')
param smtpHost string = ''

@description('SMTP_PORT; empty: 587 for starttls, 465 for tls, 25 for none.')
param smtpPort string = ''

@description('SMTP_SECURITY: starttls, tls or none.')
@allowed([
  'starttls'
  'tls'
  'none'
])
param smtpSecurity string = 'starttls'

@description('SMTP_USERNAME; empty: no SMTP authentication.')
param smtpUsername string = ''

@secure()
@description('SMTP_PASSWORD, with SMTP_USERNAME (GUESTSYNC_MAIL=smtp only).')
param smtpPassword string = ''

// ---------------------------------------------------------------------------------------------------------
// On-premises AD (worker mode function only; in agent mode the agent has these settings)
// ---------------------------------------------------------------------------------------------------------

@description('AD_SERVER: ldaps:// URL of a domain controller (e.g. ldaps://dc1.contoso.com), several separated by commas, or dns:contoso.com (the DCs from DNS SRV records).')
param adServer string = ''

@description('AD_BIND_USER: DN or UPN of the service account delegated on the guest and archive OUs.')
param adBindUser string = ''

@secure()
@description('AD_BIND_PASSWORD: that account\'s password (worker mode function only).')
param adBindPassword string = ''

@secure()
@description('GUESTSYNC_OWNERSHIP_KEY: 32+ random characters that mark the accounts guestsync creates (worker mode function; the agent has its own copy of the same key).')
param ownershipKey string = ''

@secure()
@description('GUESTSYNC_OWNERSHIP_KEY_PREVIOUS: the previous ownership key during a rotation; omit otherwise.')
param ownershipKeyPrevious string = ''

@description('GUESTSYNC_ADOPT_UNTIL: end of a MIM migration window (ISO 8601 with time zone) during which unmarked CN=<id> accounts are taken over; empty: never.')
param adoptUntil string = ''

@description('AD_GUEST_OU: DN of the guest OU, e.g. OU=B2BGuest,DC=contoso,DC=com.')
param adGuestOu string = ''

@description('AD_ARCHIVE_OU: DN of the archive OU, e.g. OU=B2BGuestArchive,DC=contoso,DC=com (with GUESTSYNC_DEPROVISION=archive).')
param adArchiveOu string = ''

@description('AD_CA_FILE: path of a PEM file, readable by the app, with the CA of the domain controllers\' certificates; empty: system trust store.')
param adCaFile string = ''

@description('AD_VALIDATE_CERTIFICATE: validate the LDAPS certificate (turn off only to diagnose).')
param adValidateCertificate bool = true

@description('AD_CONNECT_TIMEOUT: seconds to wait for a domain controller.')
@minValue(1)
@maxValue(300)
param adConnectTimeout int = 10

@description('GUESTSYNC_LDAP_CONNECTIONS: LDAPS connections the worker opens at most, one per export in flight.')
@minValue(1)
@maxValue(32)
param ldapConnections int = 8

// ---------------------------------------------------------------------------------------------------------
// Network (worker mode function) and the on-premises agent (worker mode agent)
// ---------------------------------------------------------------------------------------------------------

@description('Integrate the app with a virtual network (worker mode function: the route to the domain controllers) and reach storage and Key Vault through private endpoints only (their public network access off).')
param enableVnet bool = false

@description('With enableVnet: resource id of an existing subnet delegated to Microsoft.App/environments (e.g. in a network peered with the hub); empty: create a virtual network.')
param existingSubnetId string = ''

@description('With enableVnet and no existingSubnetId: address space of the new virtual network.')
param vnetAddressPrefix string = '10.20.0.0/16'

@description('With enableVnet and no existingSubnetId: the integration subnet.')
param integrationSubnetPrefix string = '10.20.1.0/24'

@description('With enableVnet and no existingSubnetId: the subnet of the private endpoints (storage blob, queue, table; Key Vault).')
param privateEndpointSubnetPrefix string = '10.20.2.0/24'

@description('With enableVnet and existingSubnetId: resource id of an existing subnet (not delegated) for the private endpoints; the private DNS zones are linked to the network of existingSubnetId.')
param existingPrivateEndpointSubnetId string = ''

@description('With enableVnet and no existingSubnetId: comma-separated DNS servers (e.g. the domain controllers); empty: Azure DNS.')
param vnetDnsServers string = ''

@description('Worker mode agent: object id of the service principal the on-premises agent signs in with; it gets the queue data role on each of guestsync\'s queues and the table data role on the state table (nothing on the account), and Monitoring Metrics Publisher on Application Insights for its telemetry. Empty: none.')
param agentPrincipalId string = ''

@description('With enableVnet, for an agent without a private route to the storage account: comma-separated public egress addresses or CIDR ranges of the agent\'s servers; the storage account\'s public endpoint then accepts these only. Empty: public endpoint off.')
param agentEgressIpRanges string = ''

// ---------------------------------------------------------------------------------------------------------
// Names and modes
// ---------------------------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var allTags = union(tags, {
  'azd-env-name': environmentName
})
var appName = !empty(functionAppName) ? functionAppName : 'func-guestsync-${resourceToken}'
var deploymentContainerName = 'app-package'

var isFunctionWorker = workerMode == 'function'
var createVnet = enableVnet && empty(existingSubnetId)
// Comma-separated lists without lambdas (pycep, the parser checkov uses, has none): addresses hold no spaces.
var dnsServers = empty(vnetDnsServers) ? [] : split(replace(vnetDnsServers, ' ', ''), ',')
var agentEgressRanges = empty(agentEgressIpRanges) ? [] : split(replace(agentEgressIpRanges, ' ', ''), ',')

// A secret exists (and its app setting refers to it) only when the chosen modes use it and it was given.
var createSecret = {
  graphClientStatePrevious: !empty(graphClientStatePrevious)
  graphClientSecret: graphAuth == 'client_secret' && !empty(graphClientSecret)
  graphClientCertificate: graphAuth == 'certificate' && !empty(graphClientCertificate)
  graphClientCertificatePassword: graphAuth == 'certificate' && !empty(graphClientCertificatePassword)
  adBindPassword: isFunctionWorker && !empty(adBindPassword)
  ownershipKey: isFunctionWorker && !empty(ownershipKey)
  ownershipKeyPrevious: isFunctionWorker && !empty(ownershipKeyPrevious)
  smtpPassword: mailMode == 'smtp' && !empty(smtpPassword)
}

// ---------------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------------

// The one identity of the app: storage (host and code), deployment package, Key Vault references,
// Application Insights and, with GRAPH_AUTH=managed_identity, Microsoft Graph.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-guestsync-${resourceToken}'
  location: location
  tags: allTags
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'stgsync${resourceToken}'
    location: location
    tags: allTags
    deploymentContainerName: deploymentContainerName
    changeQueueName: changeQueueName
    exportQueueName: exportQueueName
    stateTableName: stateTableName
    identityPrincipalId: identity.properties.principalId
    agentPrincipalId: agentPrincipalId
    enableVnet: enableVnet
    agentEgressIpRanges: agentEgressRanges
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: 'kv-gsync-${resourceToken}'
    location: location
    tags: allTags
    identityPrincipalId: identity.properties.principalId
    enableVnet: enableVnet
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    graphClientState: graphClientState
    webhookFunctionKey: webhookFunctionKey
    graphClientStatePrevious: graphClientStatePrevious
    graphClientSecret: graphClientSecret
    graphClientCertificate: graphClientCertificate
    graphClientCertificatePassword: graphClientCertificatePassword
    adBindPassword: adBindPassword
    ownershipKey: ownershipKey
    ownershipKeyPrevious: ownershipKeyPrevious
    smtpPassword: smtpPassword
    create: createSecret
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-guestsync-${resourceToken}'
    applicationInsightsName: 'appi-guestsync-${resourceToken}'
    location: location
    tags: allTags
    identityPrincipalId: identity.properties.principalId
    agentPrincipalId: agentPrincipalId
  }
}

module network 'modules/network.bicep' = if (createVnet) {
  name: 'network'
  params: {
    name: 'vnet-guestsync-${resourceToken}'
    location: location
    tags: allTags
    addressPrefix: vnetAddressPrefix
    integrationSubnetPrefix: integrationSubnetPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
    dnsServers: dnsServers
  }
}

var subnetId = createVnet ? network.outputs.integrationSubnetId : existingSubnetId
var vnetId = createVnet ? network.outputs.id : first(split(existingSubnetId, '/subnets/'))
var privateEndpointSubnetId = createVnet ? network.outputs.privateEndpointSubnetId : existingPrivateEndpointSubnetId

// With enableVnet, storage and Key Vault have public network access off: the app reaches them here.
module privateLink 'modules/privatelink.bicep' = if (enableVnet) {
  name: 'privatelink'
  params: {
    location: location
    tags: allTags
    vnetId: vnetId
    subnetId: privateEndpointSubnetId
    storageAccountId: storage.outputs.id
    storageAccountName: storage.outputs.name
    keyVaultId: keyVault.outputs.id
    keyVaultName: keyVault.outputs.name
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-guestsync-${resourceToken}'
  location: location
  tags: allTags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(allTags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id
    virtualNetworkSubnetId: enableVnet ? subnetId : null
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: storage.outputs.deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        // Per-function scale group of the change queue's listener (the name of the function, as registered in
        // shared/functions.py). Empty: every function scales from zero.
        alwaysReady: concat((alwaysReadyApply > 0) ? [
          {
            name: 'function:apply_change'
            instanceCount: alwaysReadyApply
          }
        ] : [], (alwaysReadyHttp > 0) ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttp
          }
        ] : [])
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No FTP and no basic (user name and password) publishing on the app or its scm site: deployments sign in
// with Entra ID (azd and the Azure CLI do).
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// The app's own log (every function invocation, guestsync's log lines) in the workspace.
resource siteDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'app-logs-to-log-analytics'
  scope: site
  properties: {
    workspaceId: monitoring.outputs.workspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
  }
}

// The function key `graph` that Graph's notification and lifecycle URLs carry (?code=): the webhook
// functions refuse calls without it, in addition to checking clientState. Its value is the Key Vault secret
// webhook-function-key (GUESTSYNC_WEBHOOK_KEY below), so the app puts it in the URLs it subscribes with.
// Rotation: set a new value (azd env set GUESTSYNC_WEBHOOK_KEY ...; azd provision), which updates the key and
// the secret together, then let the subscription check re-create the subscription (README, Operations).
resource webhookKey 'Microsoft.Web/sites/host/functionKeys@2024-04-01' = {
  name: '${site.name}/default/graph'
  properties: {
    name: 'graph'
    value: webhookFunctionKey
  }
  dependsOn: [
    siteAppSettings
  ]
}

// ---------------------------------------------------------------------------------------------------------
// App settings: every setting the code reads (shared/settings.py, the %NAME% binding settings), in one place.
// Settings a mode does not use are set to an empty string, which the code treats as unset. Secrets are Key
// Vault references resolved with the user-assigned identity (keyVaultReferenceIdentity above).
// ---------------------------------------------------------------------------------------------------------

var secretUris = keyVault.outputs.secretUris
var webhookBase = 'https://${site.properties.defaultHostName}/api/graph'

var appSettings = {
  // Functions host and code: keyless storage with the user-assigned identity (no connection string).
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  // The endpoints of the account's own cloud, explicitly: never derived from GRAPH_CLOUD (a GCC High tenant's
  // app may run in commercial Azure).
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  // Application Insights with Entra ID authentication (local auth is off).
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'

  // Microsoft Graph
  GRAPH_AUTH: graphAuth
  GRAPH_CLOUD: graphCloud
  GRAPH_TENANT_ID: !empty(graphTenantId) ? graphTenantId : tenant().tenantId
  GRAPH_CLIENT_ID: graphAuth == 'managed_identity' ? identity.properties.clientId : graphClientId
  GRAPH_CLIENT_SECRET: createSecret.graphClientSecret ? '@Microsoft.KeyVault(SecretUri=${secretUris.graphClientSecret})' : ''
  GRAPH_CLIENT_CERTIFICATE: createSecret.graphClientCertificate ? '@Microsoft.KeyVault(SecretUri=${secretUris.graphClientCertificate})' : ''
  GRAPH_CLIENT_CERTIFICATE_PASSWORD: createSecret.graphClientCertificatePassword ? '@Microsoft.KeyVault(SecretUri=${secretUris.graphClientCertificatePassword})' : ''
  GRAPH_CLIENT_STATE: '@Microsoft.KeyVault(SecretUri=${secretUris.graphClientState})'
  GRAPH_CLIENT_STATE_PREVIOUS: createSecret.graphClientStatePrevious ? '@Microsoft.KeyVault(SecretUri=${secretUris.graphClientStatePrevious})' : ''

  // Webhook and subscription
  GUESTSYNC_NOTIFICATION_URL: '${webhookBase}/notifications'
  GUESTSYNC_LIFECYCLE_URL: '${webhookBase}/lifecycle'
  GUESTSYNC_WEBHOOK_KEY: '@Microsoft.KeyVault(SecretUri=${secretUris.webhookFunctionKey})'
  GUESTSYNC_SUBSCRIPTION_SCHEDULE: subscriptionSchedule

  // Queues, state, worker
  GUESTSYNC_WORKER_MODE: workerMode
  GUESTSYNC_CHANGE_QUEUE: changeQueueName
  GUESTSYNC_EXPORT_QUEUE: exportQueueName
  GUESTSYNC_STATE_TABLE: stateTableName
  GUESTSYNC_RECONCILE_SCHEDULE: reconcileSchedule
  GUESTSYNC_LOG_FORMAT: logFormat

  // Lifecycle and breaker
  GUESTSYNC_DEPROVISION: deprovision
  GUESTSYNC_DELETE_AFTER_DAYS: deleteAfterDays
  GUESTSYNC_SCOPE_GROUP_ID: scopeGroupId
  GUESTSYNC_UPN_SUFFIXES: upnSuffixes
  GUESTSYNC_BREAKER_THRESHOLD: string(breakerThreshold)
  GUESTSYNC_BREAKER_WINDOW_MINUTES: string(breakerWindowMinutes)

  // Operator alerts
  GUESTSYNC_MAIL: mailMode
  GUESTSYNC_MAIL_TO: mailTo
  GUESTSYNC_MAIL_FROM: mailFrom
  GUESTSYNC_ALERT_SCHEDULE: alertSchedule
  SMTP_HOST: mailMode == 'smtp' ? smtpHost : ''
  SMTP_PORT: mailMode == 'smtp' ? smtpPort : ''
  SMTP_SECURITY: mailMode == 'smtp' ? smtpSecurity : ''
  SMTP_USERNAME: mailMode == 'smtp' ? smtpUsername : ''
  SMTP_PASSWORD: createSecret.smtpPassword ? '@Microsoft.KeyVault(SecretUri=${secretUris.smtpPassword})' : ''

  // On-premises AD: only where the worker runs (worker mode function). Empty in agent mode, where a set
  // AD_SERVER would make the app load (and require) the directory settings.
  AD_SERVER: isFunctionWorker ? adServer : ''
  AD_BIND_USER: isFunctionWorker ? adBindUser : ''
  AD_BIND_PASSWORD: createSecret.adBindPassword ? '@Microsoft.KeyVault(SecretUri=${secretUris.adBindPassword})' : ''
  AD_GUEST_OU: isFunctionWorker ? adGuestOu : ''
  AD_ARCHIVE_OU: isFunctionWorker ? adArchiveOu : ''
  AD_CA_FILE: isFunctionWorker ? adCaFile : ''
  AD_VALIDATE_CERTIFICATE: isFunctionWorker ? (adValidateCertificate ? 'true' : 'false') : ''
  AD_CONNECT_TIMEOUT: isFunctionWorker ? string(adConnectTimeout) : ''
  GUESTSYNC_LDAP_CONNECTIONS: isFunctionWorker ? string(ldapConnections) : ''
  GUESTSYNC_OWNERSHIP_KEY: createSecret.ownershipKey ? '@Microsoft.KeyVault(SecretUri=${secretUris.ownershipKey})' : ''
  GUESTSYNC_OWNERSHIP_KEY_PREVIOUS: createSecret.ownershipKeyPrevious ? '@Microsoft.KeyVault(SecretUri=${secretUris.ownershipKeyPrevious})' : ''
  GUESTSYNC_ADOPT_UNTIL: isFunctionWorker ? adoptUntil : ''
}

resource siteAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: appSettings
}

// ---------------------------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment: `azd env get-values`)
// ---------------------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_FUNCTION_APP_NAME string = site.name
output FUNCTION_APP_DEFAULT_HOSTNAME string = site.properties.defaultHostName
output GUESTSYNC_NOTIFICATION_URL string = '${webhookBase}/notifications'
output GUESTSYNC_LIFECYCLE_URL string = '${webhookBase}/lifecycle'
output MANAGED_IDENTITY_NAME string = identity.name
output MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output APPLICATION_INSIGHTS_NAME string = monitoring.outputs.name
output VNET_INTEGRATION_SUBNET_ID string = enableVnet ? subnetId : ''
