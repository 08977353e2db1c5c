from django.urls import path

from . import views

urlpatterns = [
    path("ping/", views.ping),
    path("api/products/", views.api_products),
    path("products/", views.products_page),
    path("export.csv", views.export_csv),
    path("scale/<int:n>/", views.scale),
]
