// Starts Swagger UI for /docs from a file: the page's CSP allows no inline script. No validator badge
// (it would load an image from the internet); the spec is this API's own.
window.ui = SwaggerUIBundle({
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  layout: 'BaseLayout',
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
});
