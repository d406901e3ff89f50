// Renders the API reference at /docs from the contract the service serves at /openapi.json.
// A file of its own, not an inline script: the page's Content-Security-Policy allows scripts from the
// service alone.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No call to the public validator service: the page talks to this service only.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
