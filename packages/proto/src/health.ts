export * from './gen/grpc/health/v1/health.js';
export { HealthService as HealthServiceImpl } from './health-service.js';
