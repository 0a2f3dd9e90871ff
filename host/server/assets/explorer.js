// Swagger UI over this server's own OpenAPI document; "Authorize" takes an API key. It calls
// nothing but this server: no validator badge, no remote document.
window.ui = SwaggerUIBundle({
  url: "/docs/json",
  dom_id: "#ui",
  deepLinking: true,
  persistAuthorization: false,
  validatorUrl: null,
});
